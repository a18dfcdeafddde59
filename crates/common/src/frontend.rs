//! The shared front end: accept loop, routing, admission, and the server's own `/status`.
//!
//! [`serve`] is the seam: it takes an already-bound listener and a shutdown future, so `main` binds
//! the configured address and tests bind port 0.

mod access;
mod admission;
mod app;
mod connection;
mod listener;
mod metrics;
mod router;
mod status;
mod watchdog;

pub use app::App;
pub use connection::Role;
pub use listener::{serve, serve_all, Listeners, Tls};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

/// The body type of every response the front end sends.
pub type Body = Full<Bytes>;

/// The error that makes hyper drop a request without answering: `ignore` overflow. On HTTP/1 the
/// connection is closed without a response byte; on HTTP/2 the stream is reset. A zero-sized type,
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

/// Turn a handler-style response into the front end's body type.
fn to_body(resp: Response<Bytes>) -> Response<Body> {
    resp.map(Full::new)
}
