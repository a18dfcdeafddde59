//! The shared front end: accept loop, TLS, routing, admission into the endpoints' queues, and the
//! server's own `/status`, `/metrics` and probes.
//!
//! [`serve`] is the seam: it takes an already-bound listener and a shutdown future, so `main` binds
//! the configured address and tests bind port 0.
//!
//! # Layout
//! A request passes through the first five in order. Imports point one way, from the listener
//! towards the app: nothing imports the listener, and the router does not import the service.
//! - `listener`: the bound sockets ([`Listeners`], [`Tls`]), [`serve_all`] and the drain (jobs
//!   first, then connections; returns when the last connection closes).
//!   - `listener/accept`: one socket's accept loop as a struct: connection limit, accept errors
//!     sorted (and their log rate-limited), optional bounded TLS handshake, one serve path.
//!   - `listener/stream`: plain TCP or TLS as one I/O type.
//! - [`door`]: the public listener stops accepting while every queue is full and ignores overflow.
//! - [`hold`]: an HTTP/1 connection whose request overflowed is held unread until a deadline;
//!   its counters.
//! - `connections`: the connection table: socket progress, the idle sweeper, the drain's wake-up
//!   and its wait for the last close.
//! - `service`: one connection's hyper service (access log, HSTS, redirect, request cap).
//! - `router`: path and method to an endpoint or an own path; a listener's [`Role`].
//! - `admission`: a request to its endpoint's admission, and the outcome as HTTP.
//! - [`App`]: the running endpoints, the light, the child registry and readiness.
//! - `status`, `metrics`: `/status` (JSON) and `/metrics` (Prometheus text).
//! - [`readiness`]: `/readyz` with hysteresis, on an injectable clock.
//! - [`access`]: the access-log line, and [`access::AccessLog`], the bounded buffer a background
//!   thread writes out in batches.
//! - [`auth`]: bearer tokens from a file, checked before admission.
//! - [`tls`]: HTTPS: certificate store (reloadable), rustls config, bounded handshake.
//! - `unsent`: response bytes not yet taken by their clients: the body hyper sends (large bodies
//!   in counted slices), per-connection and server-wide budgets.

pub mod access;
mod admission;
mod app;
pub mod auth;
mod connections;
pub mod door;
pub mod hold;
mod listener;
mod metrics;
pub mod readiness;
mod router;
mod service;
mod status;
pub mod tls;
mod unsent;

pub use app::App;
pub use listener::{serve, serve_all, Listeners, Tls};
pub use router::Role;

use hyper::Response;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body type of every response the front end sends: the handlers' own
/// ([`common::body::ResponseBody`]): whole bytes (as cheap as a `Full<Bytes>`: nothing boxed), or
/// a stream polled from its producer's bounded channel (HTTP/1 chunked, HTTP/2 DATA frames).
pub type Body = common::body::ResponseBody;

/// The error that makes hyper drop a request without answering: `ignore` overflow. On HTTP/1 the
/// connection is held unread (see [`hold`]), then closed without a response byte; on HTTP/2 the
/// stream is reset. A zero-sized type,
/// so returning it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Ignored;

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overflow ignored")
    }
}

impl std::error::Error for Ignored {}

/// A response or a deliberate silence.
pub type Answer = Result<Response<Body>, Ignored>;

/// A request's slow path: reading a body or waiting for a queued job's reply (boxed), or an
/// asynchronous run (awaited as the admission made it: its handler's future is boxed there).
enum Pending {
    Boxed(Pin<Box<dyn Future<Output = Answer> + Send>>),
    Direct(common::admission::DirectRun),
}

impl Future for Pending {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.get_mut() {
            Pending::Boxed(pending) => pending.as_mut().poll(cx),
            Pending::Direct(run) => Pin::new(run).poll(cx).map(Ok),
        }
    }
}

/// How a request is answered: at once (routing, the server's own paths, errors, overflow and
/// inline builtins are decided synchronously), or later, by a boxed future. Keeping the fast path
/// out of an `async` state machine keeps the per-request future a few words instead of kilobytes
/// that hyper would move around for every request.
enum Step {
    Now(Answer),
    /// An inline handler's answer, with its timing for the access log (beside the response: an
    /// extension would cost three allocations on the cheapest path there is).
    Inline(Answer, Option<common::job::JobTiming>),
    Later(Pending),
}

/// What the connection's service answers: the response with its body as hyper sends it
/// (`unsent::Sent`), or a deliberate silence.
pub type Sending = Result<Response<unsent::Sent>, Ignored>;

/// The future the connection's service returns: answered at once, or later.
pub struct Reply(Option<Ready>);

enum Ready {
    Now(Sending),
    Later(service::Waiting),
}

impl Reply {
    fn now(answer: Sending) -> Reply {
        Reply(Some(Ready::Now(answer)))
    }

    fn waiting(waiting: service::Waiting) -> Reply {
        Reply(Some(Ready::Later(waiting)))
    }
}

impl Future for Reply {
    type Output = Sending;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Sending> {
        let this = self.get_mut();
        if let Some(Ready::Later(waiting)) = &mut this.0 {
            let answer = std::task::ready!(Pin::new(waiting).poll(cx));
            this.0 = None;
            return Poll::Ready(answer);
        }
        match this.0.take() {
            Some(Ready::Now(answer)) => Poll::Ready(answer),
            // Polled again after it completed (hyper never does): nothing more to say.
            _ => Poll::Ready(Err(Ignored)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every answer, the ones made at once too, is moved as a [`super::Reply`], whose size is its
    /// largest kind's: an answer that comes later must not make it much larger than an answer
    /// itself (benches/ping_instructions.sh: the later kind at 392 bytes cost `/ping` about 160
    /// instructions).
    #[test]
    fn a_reply_is_about_the_size_of_the_answer_it_carries() {
        let (reply, answer) = (
            std::mem::size_of::<super::Reply>(),
            std::mem::size_of::<super::Sending>(),
        );
        assert!(
            reply <= answer + 16,
            "Reply {reply} bytes, Sending {answer}"
        );
    }
}
