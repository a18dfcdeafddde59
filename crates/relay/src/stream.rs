//! The next chunk of a streamed answer, for a producer on an executor thread: waited for on the
//! relay's runtime in short slices, so a client that went away between two chunks is seen within
//! [`CLIENT_POLL`], and bounded by the whole answer's deadline and an idle timeout.

use bytes::Bytes;
use common::body::BodySink;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::{Duration, Instant};

/// How often a producer waiting for the next chunk looks whether its client has gone.
pub const CLIENT_POLL: Duration = Duration::from_millis(50);

/// What came next from the server.
#[derive(Debug)]
pub enum Next {
    /// A chunk (never empty).
    Data(Bytes),
    /// The body ended cleanly.
    End,
    /// The connection failed mid-body.
    Broken(String),
    /// No chunk within the idle timeout.
    Idle,
    /// The whole answer's deadline passed.
    Timeout,
    /// The client went away.
    ClientGone,
}

/// The next chunk of `body`, waiting at most `idle` for it (and never past `until`), looking every
/// [`CLIENT_POLL`] whether `sink`'s client has gone. Blocks the calling (executor) thread on
/// `runtime`.
pub fn next_chunk(
    runtime: &tokio::runtime::Handle,
    body: &mut Incoming,
    sink: &BodySink,
    until: Instant,
    idle: Option<Duration>,
) -> Next {
    let idle_until = idle.map_or(until, |idle| Instant::now() + idle);
    loop {
        let now = Instant::now();
        if now >= until {
            return Next::Timeout;
        }
        if now >= idle_until {
            return Next::Idle;
        }
        if sink.is_client_gone() {
            return Next::ClientGone;
        }
        let slice = until.min(idle_until).saturating_duration_since(now);
        let frame = runtime.block_on(async {
            // `frame()` only polls the body: dropping it at the timeout loses nothing.
            tokio::time::timeout(slice.min(CLIENT_POLL), body.frame()).await
        });
        match frame {
            Err(_) => continue,
            Ok(None) => return Next::End,
            Ok(Some(Err(e))) => return Next::Broken(e.to_string()),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => return Next::Data(data),
                // Trailers, empty chunks: nothing to forward.
                _ => continue,
            },
        }
    }
}
