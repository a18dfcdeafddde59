//! A response body: whole bytes, or a stream its handler produces on the executor thread through a
//! bounded channel to the front end.
//!
//! A handler answers with [`ResponseBody::Full`] (the common case: bytes, nothing boxed), or with
//! [`ResponseBody::stream`]: a [`Producer`] the [`crate::executor::JobRunner`] calls on the same
//! executor thread, still holding the job's running slot, after the response head has gone to the
//! waiting front end. The producer writes chunks into a [`BodySink`]; the front end polls the
//! other half (the same [`ResponseBody::Stream`], now holding the channel's receiving end) as a
//! hyper body (HTTP/1 chunked, HTTP/2 DATA frames). A stream is boxed, so a whole body is the
//! size of its `Bytes`, as hyper's `Full<Bytes>` is.
//!
//! The channel between them holds at most [`STREAM_CHUNKS`] chunks of at most [`STREAM_CHUNK_BYTES`]
//! each: a slow reader blocks the producer in [`BodySink::send`], memory never grows. `send` fails
//! once the client is gone (the front end dropped its half), and at the producer's deadline
//! ([`BodySink::set_deadline`]), so a producer never blocks forever. A producer that returns an
//! error after the head was sent makes the front end abort the response (HTTP/1: the connection is
//! closed before the final chunk; HTTP/2: the stream is reset), so the client sees a truncated body,
//! never a clean end.
//!
//! An asynchronous run's stream ([`ResponseBody::polled`], an upstream's answer relayed on the
//! client connection's own task) needs no thread and no channel: the front end polls its
//! [`Source`] directly as hyper asks for the next frame, so a slow reader is a source not polled,
//! and a client gone is the source dropped. Its run's accounting (the outcome counted once, the
//! run time, the running slot given back) is settled when it ends, however it ends.
//!
//! Hand-written rather than a crate's channel: the sending side is a plain thread that must wait
//! with a deadline (tokio's `blocking_send` has none) and the receiving side is polled by hyper
//! (crossbeam's receiver cannot wake a task). It is one mutex, one condition variable and a waker.

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Chunks a stream's channel holds at most; the producer blocks while it is full.
pub const STREAM_CHUNKS: usize = 4;

/// Largest chunk the channel carries; [`BodySink::send`] splits bigger ones (without copying).
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// What produces a streamed body: called once, on the executor thread that ran the handler, with
/// the sink to write into. Returns `Ok` when the body is complete; an error after the head was
/// sent aborts the response (see the [module docs](self)).
pub type Producer = Box<dyn FnOnce(&mut BodySink) -> Result<(), StreamError> + Send>;

/// Called once when a streamed body ends as the front end saw it (see
/// [`ResponseBody::on_stream_end`]).
pub type EndHook = Box<dyn FnOnce(StreamSummary) + Send>;

/// What a polled stream ([`ResponseBody::polled`]) reads from: polled on the front end's task
/// each time hyper can take the next frame, never between, so it needs no buffer of its own.
pub trait Source: Send + 'static {
    /// The next chunk, `None` at the clean end, an error (the response is aborted, and that is the
    /// stream's outcome), or pending with `cx`'s waker kept for when one of those is ready. Not
    /// polled again after `None` or an error.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>>;
}

/// The asynchronous runner's accounting of a polled stream, called once with its outcome when it
/// ends: clean, an error, or dropped before its end (the client went away: `ClientGone`); and
/// whether the source panicked (its outcome is then `Failed`).
pub(crate) type Settle = Box<dyn FnOnce(&Result<(), StreamError>, bool) + Send>;

/// The body of a [`crate::handler::JobResponse`].
pub enum ResponseBody {
    /// The whole body, known when the handler returns.
    Full(Bytes),
    /// A streamed body (made with [`ResponseBody::stream`]): its producer as the handler returns
    /// it, then, once the [`crate::executor::JobRunner`] has started it, the front end's half of
    /// its channel.
    Stream(Box<BodyStream>),
}

/// A streamed body's state (inside [`ResponseBody::Stream`]).
pub struct BodyStream(Streamed);

enum Streamed {
    /// Not started: the handler's producer.
    Pending(Producer),
    /// Being produced: the receiving half of its channel.
    Receiving(BodyReceiver),
    /// Polled from its source on the front end's task.
    Polled(Polled),
}

/// A polled stream's state.
struct Polled {
    source: Box<dyn Source>,
    /// Body bytes handed to the connection.
    sent: u64,
    /// Set by the asynchronous runner; taken at the end.
    settle: Option<Settle>,
    /// The front end's hooks; taken at the end.
    hook: Option<EndHook>,
    ended: bool,
    /// The source panicked (the stream ended `Failed` there).
    panicked: bool,
}

impl Polled {
    /// The next frame: the source's chunk, or its end (settled and reported here, once).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = match crate::supervisor::catch_panic(|| self.source.poll_chunk(cx)) {
            Ok(next) => next,
            Err(message) => {
                tracing::debug!(%message, "stream source panicked; aborting the response");
                self.panicked = true;
                Poll::Ready(Some(Err(StreamError::Failed("handler failed".into()))))
            }
        };
        match next {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(None) => {
                self.end(Ok(()));
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(Err(e.clone()));
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// Settle the run and report the end, once.
    fn end(&mut self, outcome: Result<(), StreamError>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(settle) = self.settle.take() {
            settle(&outcome, self.panicked);
        }
        if let Some(hook) = self.hook.take() {
            hook(StreamSummary {
                bytes: self.sent,
                completed: outcome.is_ok(),
            });
        }
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or its connection was closed).
        self.end(Err(StreamError::ClientGone));
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Full(bytes) => f.debug_tuple("Full").field(bytes).finish(),
            ResponseBody::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl Default for ResponseBody {
    fn default() -> ResponseBody {
        ResponseBody::empty()
    }
}

impl ResponseBody {
    /// An empty, complete body.
    pub fn empty() -> ResponseBody {
        ResponseBody::Full(Bytes::new())
    }

    /// A streamed body: `produce` is called on the executor thread once the head has been sent.
    pub fn stream(
        produce: impl FnOnce(&mut BodySink) -> Result<(), StreamError> + Send + 'static,
    ) -> ResponseBody {
        ResponseBody::Stream(Box::new(BodyStream(Streamed::Pending(Box::new(produce)))))
    }

    /// The bytes of a whole body; `None` for a stream.
    pub fn as_full(&self) -> Option<&Bytes> {
        match self {
            ResponseBody::Full(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// True for a body that is (or will be) streamed.
    pub fn is_stream(&self) -> bool {
        !matches!(self, ResponseBody::Full(_))
    }

    /// A streamed body polled from `source` on the front end's task: for an asynchronous run's
    /// answer ([`crate::handler::Handler::call_async`]) only, whose runner settles it when it ends
    /// (any other runner refuses it as it refuses an unstarted producer).
    pub fn polled(source: impl Source) -> ResponseBody {
        ResponseBody::Stream(Box::new(BodyStream(Streamed::Polled(Polled {
            source: Box::new(source),
            sent: 0,
            settle: None,
            hook: None,
            ended: false,
            panicked: false,
        }))))
    }

    /// True for a streamed body nobody will produce or settle: a producer nobody has started,
    /// or a polled stream no asynchronous runner took.
    pub(crate) fn is_unstarted(&self) -> bool {
        matches!(self, ResponseBody::Stream(s) if match &s.0 {
            Streamed::Pending(_) => true,
            Streamed::Polled(polled) => polled.settle.is_none(),
            Streamed::Receiving(_) => false,
        })
    }

    /// The asynchronous runner: settle a polled stream with `settle` when it ends. False (and
    /// `settle` dropped uncalled) for any other body, or a polled stream already settled.
    pub(crate) fn settle_with(&mut self, settle: Settle) -> bool {
        match self {
            ResponseBody::Stream(stream) => match &mut stream.0 {
                Streamed::Polled(polled) if polled.settle.is_none() && !polled.ended => {
                    polled.settle = Some(settle);
                    true
                }
                _ => false,
            },
            ResponseBody::Full(_) => false,
        }
    }

    /// True for a polled stream.
    pub(crate) fn is_polled(&self) -> bool {
        matches!(self, ResponseBody::Stream(s) if matches!(s.0, Streamed::Polled(_)))
    }

    /// Front end: call `hook` once when a streamed body ends, completed or not (the client went
    /// away, the producer failed), after the hooks set before it. Nothing for a whole body, which
    /// the caller logs at once.
    pub fn on_stream_end(&mut self, hook: EndHook) {
        fn chain(kept: &mut Option<EndHook>, hook: EndHook) {
            *kept = Some(match kept.take() {
                None => hook,
                Some(first) => Box::new(move |summary| {
                    first(summary);
                    hook(summary);
                }),
            });
        }
        if let ResponseBody::Stream(stream) = self {
            match &mut stream.0 {
                Streamed::Receiving(rx) => chain(&mut rx.shared.lock().hook, hook),
                Streamed::Polled(polled) if !polled.ended => chain(&mut polled.hook, hook),
                _ => {}
            }
        }
    }

    /// The runner: turn a [`ResponseBody::Stream`] into its channel's receiving half, and return
    /// the producer with its sink. `None` for any other body.
    pub(crate) fn start(&mut self) -> Option<(Producer, BodySink)> {
        let ResponseBody::Stream(stream) = self else {
            return None;
        };
        if !matches!(stream.0, Streamed::Pending(_)) {
            return None;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chunks: VecDeque::with_capacity(STREAM_CHUNKS),
                end: None,
                receiver_gone: false,
                waker: None,
                sent: 0,
                hook: None,
            }),
            room: Condvar::new(),
        });
        let receiver = Streamed::Receiving(BodyReceiver {
            shared: shared.clone(),
        });
        match std::mem::replace(&mut stream.0, receiver) {
            Streamed::Pending(producer) => Some((
                producer,
                BodySink {
                    shared,
                    deadline: None,
                    produced: 0,
                    finished: false,
                },
            )),
            _ => None,
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> ResponseBody {
        ResponseBody::Full(bytes)
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> ResponseBody {
        ResponseBody::Full(Bytes::from_static(text.as_bytes()))
    }
}

impl From<&'static [u8]> for ResponseBody {
    fn from(bytes: &'static [u8]) -> ResponseBody {
        ResponseBody::Full(Bytes::from_static(bytes))
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> ResponseBody {
        ResponseBody::Full(Bytes::from(text))
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(bytes: Vec<u8>) -> ResponseBody {
        ResponseBody::Full(Bytes::from(bytes))
    }
}

/// Why a streamed body ended early. After the head was sent it can only be told by aborting the
/// response; it is also the stream's counted outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The client went away (the front end dropped its half): counted as `client_gone`.
    #[error("client gone")]
    ClientGone,
    /// The whole-response deadline or the idle timeout between chunks passed: counted as timed out.
    #[error("{0}")]
    Timeout(String),
    /// The producer failed (program or worker error, an output cap): counted as failed.
    #[error("{0}")]
    Failed(String),
}

impl crate::counters::OutcomeKind for StreamError {
    fn is_timeout(&self) -> bool {
        matches!(self, StreamError::Timeout(_))
    }

    fn is_client_gone(&self) -> bool {
        matches!(self, StreamError::ClientGone)
    }
}

/// How a streamed body ended, as the front end saw it: for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    /// Body bytes handed to the connection.
    pub bytes: u64,
    /// True if the body ended cleanly; false if the client went away or the producer failed.
    pub completed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a chunk was taken or the receiver went away.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct State {
    /// At most [`STREAM_CHUNKS`].
    chunks: VecDeque<Bytes>,
    /// Set once by the producer's side when it ends.
    end: Option<Result<(), StreamError>>,
    receiver_gone: bool,
    waker: Option<Waker>,
    /// Bytes the receiver handed to the connection.
    sent: u64,
    hook: Option<EndHook>,
}

/// The producer's half of a streamed body: [`BodySink::send`] blocks while the channel is full.
pub struct BodySink {
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    produced: u64,
    finished: bool,
}

impl std::fmt::Debug for BodySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySink")
            .field("produced", &self.produced)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl BodySink {
    /// Send `chunk` to the client, split into pieces of at most [`STREAM_CHUNK_BYTES`]. Blocks
    /// while the channel is full (a slow reader slows the producer); fails with
    /// [`StreamError::ClientGone`] once the client is gone, and with [`StreamError::Timeout`] at
    /// the deadline. An empty chunk is skipped.
    pub fn send(&mut self, mut chunk: Bytes) -> Result<(), StreamError> {
        while chunk.len() > STREAM_CHUNK_BYTES {
            let piece = chunk.split_to(STREAM_CHUNK_BYTES);
            self.send_one(piece)?;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.send_one(chunk)
    }

    fn send_one(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        let len = chunk.len() as u64;
        let mut state = self.shared.lock();
        loop {
            if state.receiver_gone {
                return Err(StreamError::ClientGone);
            }
            if state.chunks.len() < STREAM_CHUNKS {
                state.chunks.push_back(chunk);
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                self.produced += len;
                return Ok(());
            }
            let wait = match self.deadline {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(StreamError::Timeout(
                            "response not read by the client within timeout_ms".into(),
                        ));
                    }
                    left
                }
                None => IDLE_WAIT,
            };
            state = match self.shared.room.wait_timeout(state, wait) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// From now on, [`BodySink::send`] fails with [`StreamError::Timeout`] once `at` has passed
    /// while it waits for room: the producer's whole-response deadline.
    pub fn set_deadline(&mut self, at: Instant) {
        self.deadline = Some(at);
    }

    /// True once the client is gone (the front end dropped its half): stop producing.
    pub fn is_client_gone(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Body bytes sent into the channel so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The runner, when the producer returned: the receiver ends the body cleanly after the
    /// chunks still queued, or aborts it with the error.
    pub(crate) fn finish(mut self, result: &Result<(), StreamError>) {
        self.end(result.clone());
    }

    fn end(&mut self, result: Result<(), StreamError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let mut state = self.shared.lock();
        state.end = Some(result);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for BodySink {
    fn drop(&mut self) {
        // Dropped without `finish` (a panic unwound past it): never a clean end.
        self.end(Err(StreamError::Failed("the producer stopped".into())));
    }
}

/// How long a sink without a deadline waits for room before it looks again (it is woken at once
/// when a chunk is taken or the client goes away; this only bounds a missed wake-up).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The front end's half of a streamed body. Dropping it (the client went away) makes the
/// producer's next [`BodySink::send`] fail.
struct BodyReceiver {
    shared: Arc<Shared>,
}

impl BodyReceiver {
    /// The next chunk, the clean end, the producer's error, or pending (the waker kept).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let mut state = self.shared.lock();
        if let Some(chunk) = state.chunks.pop_front() {
            state.sent += chunk.len() as u64;
            drop(state);
            self.shared.room.notify_one();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let (poll, report) = match &state.end {
            None => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                (Poll::Pending, None)
            }
            Some(Ok(())) => (Poll::Ready(None), BodyReceiver::report(&mut state, true)),
            Some(Err(e)) => {
                let e = e.clone();
                (
                    Poll::Ready(Some(Err(e))),
                    BodyReceiver::report(&mut state, false),
                )
            }
        };
        drop(state);
        if let Some((hook, summary)) = report {
            hook(summary);
        }
        poll
    }

    /// Report the end once, outside the lock.
    fn report(state: &mut State, completed: bool) -> Option<(EndHook, StreamSummary)> {
        let hook = state.hook.take()?;
        Some((
            hook,
            StreamSummary {
                bytes: state.sent,
                completed,
            },
        ))
    }
}

impl Drop for BodyReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.chunks.clear();
        let report = BodyReceiver::report(&mut state, false);
        drop(state);
        self.shared.room.notify_all();
        if let Some((hook, summary)) = report {
            hook(summary);
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => {
                if bytes.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes)))))
                }
            }
            ResponseBody::Stream(stream) => match &mut stream.0 {
                // A producer nobody started (only a handler's own caller holds one): no body.
                Streamed::Pending(_) => Poll::Ready(None),
                Streamed::Receiving(rx) => rx.poll(cx),
                Streamed::Polled(polled) => polled.poll(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_empty(),
            ResponseBody::Stream(stream) => match &stream.0 {
                Streamed::Pending(_) => true,
                Streamed::Polled(polled) => polled.ended,
                Streamed::Receiving(_) => false,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Stream(stream) => match stream.0 {
                Streamed::Pending(_) => SizeHint::with_exact(0),
                Streamed::Receiving(_) | Streamed::Polled(_) => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    fn started() -> (ResponseBody, BodySink) {
        let mut body = ResponseBody::stream(|_| Ok(()));
        let (_producer, sink) = body.start().unwrap();
        (body, sink)
    }

    fn poll(body: &mut ResponseBody) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    #[test]
    fn a_big_chunk_is_split_and_a_full_channel_times_out_at_the_deadline() {
        let (mut body, mut sink) = started();
        sink.set_deadline(Instant::now() + Duration::from_millis(20));
        let big = Bytes::from(vec![0u8; STREAM_CHUNK_BYTES * STREAM_CHUNKS + 1]);
        assert!(matches!(sink.send(big), Err(StreamError::Timeout(_))));
        assert_eq!(sink.produced(), (STREAM_CHUNK_BYTES * STREAM_CHUNKS) as u64);
        for _ in 0..STREAM_CHUNKS {
            match poll(&mut body) {
                Poll::Ready(Some(Ok(frame))) => {
                    assert_eq!(frame.into_data().unwrap().len(), STREAM_CHUNK_BYTES)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(poll(&mut body).is_pending());
        sink.finish(&Ok(()));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn the_receiver_gone_fails_the_next_send_and_reports_the_end_once() {
        let (mut body, mut sink) = started();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        body.on_stream_end(Box::new(move |s| log.lock().unwrap().push(s)));
        sink.send(Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        drop(body);
        assert_eq!(
            sink.send(Bytes::from_static(b"d")),
            Err(StreamError::ClientGone)
        );
        assert!(sink.is_client_gone());
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [StreamSummary {
                bytes: 3,
                completed: false
            }]
        );
    }

    #[test]
    fn a_sink_dropped_unfinished_aborts_the_body() {
        let (mut body, sink) = started();
        drop(sink);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
    }

    /// A source that gives its chunks, then its end.
    struct Chunks(VecDeque<Poll<Option<Result<Bytes, StreamError>>>>);

    impl Source for Chunks {
        fn poll_chunk(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Bytes, StreamError>>> {
            self.0.pop_front().unwrap_or(Poll::Pending)
        }
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A polled body over `chunks`, settled and hooked into `seen`.
    fn polled(chunks: Vec<Poll<Option<Result<Bytes, StreamError>>>>) -> (ResponseBody, Seen) {
        let seen: Seen = Arc::default();
        let mut body = ResponseBody::polled(Chunks(chunks.into()));
        assert!(body.is_unstarted(), "nobody settles it yet");
        let log = seen.clone();
        assert!(body.settle_with(Box::new(move |outcome, _| {
            log.lock().unwrap().push(format!("settled {outcome:?}"))
        })));
        assert!(!body.is_unstarted());
        let log = seen.clone();
        body.on_stream_end(Box::new(move |s| {
            log.lock()
                .unwrap()
                .push(format!("ended {} {}", s.bytes, s.completed))
        }));
        (body, seen)
    }

    #[test]
    fn a_polled_stream_is_settled_and_reported_once_however_it_ends() {
        let data = |b: &'static [u8]| Poll::Ready(Some(Ok(Bytes::from_static(b))));
        // To its clean end, with a wait between the chunks.
        let (mut body, seen) = polled(vec![
            data(b"ab"),
            Poll::Pending,
            data(b"c"),
            Poll::Ready(None),
        ]);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(poll(&mut body).is_pending());
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*seen.lock().unwrap(), ["settled Ok(())", "ended 3 true"]);
        // Cut by its source.
        let cut = Poll::Ready(Some(Err(StreamError::Timeout("idle".into()))));
        let (mut body, seen) = polled(vec![data(b"ab"), cut]);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
        drop(body);
        assert_eq!(
            *seen.lock().unwrap(),
            ["settled Err(Timeout(\"idle\"))", "ended 2 false"]
        );
        // Dropped before its end: the client went away.
        let (mut body, seen) = polled(vec![data(b"ab")]);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        drop(body);
        assert_eq!(
            *seen.lock().unwrap(),
            ["settled Err(ClientGone)", "ended 2 false"]
        );
    }

    /// A source that panics when polled.
    struct Boom;

    impl Source for Boom {
        #[allow(clippy::panic)]
        fn poll_chunk(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Bytes, StreamError>>> {
            panic!("boom")
        }
    }

    #[test]
    fn a_source_that_panics_aborts_the_stream_and_is_settled_as_a_panic() {
        let mut body = ResponseBody::polled(Boom);
        let seen: Arc<Mutex<Vec<(Result<(), StreamError>, bool)>>> = Arc::default();
        let log = seen.clone();
        assert!(body.settle_with(Box::new(move |outcome, panicked| {
            log.lock().unwrap().push((outcome.clone(), panicked))
        })));
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(StreamError::Failed(_))))
        ));
        drop(body);
        assert_eq!(
            *seen.lock().unwrap(),
            [(Err(StreamError::Failed("handler failed".into())), true)]
        );
    }

    #[test]
    fn a_polled_stream_is_settled_by_one_runner_only() {
        let mut body = ResponseBody::polled(Chunks(VecDeque::new()));
        assert!(body.settle_with(Box::new(|_, _| {})));
        assert!(!body.settle_with(Box::new(|_, _| {})));
        assert!(!ResponseBody::from("x").settle_with(Box::new(|_, _| {})));
    }

    #[test]
    fn a_whole_body_is_no_bigger_than_its_bytes() {
        // As `http_body_util::Full<Bytes>` (an `Option<Bytes>`): the stream variant is boxed.
        assert_eq!(
            std::mem::size_of::<ResponseBody>(),
            std::mem::size_of::<Bytes>()
        );
    }

    #[test]
    fn a_full_body_is_one_frame_of_known_size() {
        let mut body = ResponseBody::from("pong\n");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());
    }
}
