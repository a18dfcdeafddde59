//! A worker's answer without a length (chunked: a `fiddler_worker` generator, server-sent
//! events), forwarded to the client chunk by chunk as the worker writes it.
//!
//! The producer runs on the executor thread that called the handler, still in the job's running
//! slot and still holding the worker's lease (the worker is busy until the answer ends). It reads
//! the next frame on the pool's runtime in short slices, so it sees a client that went away
//! between two chunks within [`relay::stream::CLIENT_POLL`], and hands each chunk to the sink, which blocks while
//! the client reads slowly (hyper stops reading the worker's socket meanwhile: the worker's
//! writes block, nothing grows).
//!
//! Limits: `timeout_ms` for the whole answer (the sink's deadline too), `stream_idle_timeout_ms`
//! between two chunks once the first came (past either, the worker is replaced, as for a request
//! past `timeout_ms`), `max_response_bytes` over the whole body (the connection is dropped, the worker lives on). A
//! client gone mid-stream: the connection is closed, which is how a worker learns to stop
//! (`fiddler_worker` closes the generator at its next write); the worker lives on and gets a
//! fresh connection for its next request.

use crate::pool::{Lease, StreamEnd, WorkerPool};
use crate::proxy::Conn;
use common::body::{BodySink, StreamError};
use hyper::body::Incoming;
use relay::Next;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A streamed worker answer whose head has been sent.
pub(crate) struct WorkerStream {
    pool: Arc<WorkerPool>,
    lease: Lease,
    body: Incoming,
    conn: Conn,
    /// `timeout_ms` from when the request was sent.
    until: Instant,
}

impl WorkerStream {
    pub(crate) fn new(
        pool: Arc<WorkerPool>,
        lease: Lease,
        body: Incoming,
        conn: Conn,
        until: Instant,
    ) -> WorkerStream {
        WorkerStream {
            pool,
            lease,
            body,
            conn,
            until,
        }
    }

    /// Forward the body into `sink`, then return the worker to the pool as the stream ended.
    pub(crate) fn produce(mut self, sink: &mut BodySink) -> Result<(), StreamError> {
        let config = self.lease.config().clone();
        sink.set_deadline(self.until);
        let mut total = 0usize;
        let (end, result) = loop {
            // The first bytes are bounded by `timeout_ms` alone; the idle timeout runs between
            // chunks.
            let idle = (total > 0).then_some(config.stream_idle_timeout);
            match self.next(sink, idle) {
                Next::Data(data) => {
                    total = total.saturating_add(data.len());
                    if total > config.max_response_bytes {
                        break (
                            StreamEnd::Dropped,
                            Err(StreamError::Failed(format!(
                                "worker answer larger than max_response_bytes ({})",
                                config.max_response_bytes
                            ))),
                        );
                    }
                    match sink.send(data) {
                        Ok(()) => {}
                        Err(e) => break (StreamEnd::Dropped, Err(e)),
                    }
                }
                Next::End => break (StreamEnd::Completed(None), Ok(())),
                Next::Broken(cause) => {
                    break (
                        StreamEnd::Broken(cause.clone()),
                        Err(StreamError::Failed(format!(
                            "worker answer broke mid-stream: {cause}"
                        ))),
                    )
                }
                Next::Idle => {
                    let why = format!(
                        "worker paused past stream_idle_timeout_ms ({} ms)",
                        config.stream_idle_timeout.as_millis()
                    );
                    break (
                        StreamEnd::TimedOut(why.clone()),
                        Err(StreamError::Timeout(why)),
                    );
                }
                Next::Timeout => {
                    let why = format!(
                        "worker answer ran past timeout_ms ({} ms)",
                        config.timeout.as_millis()
                    );
                    break (
                        StreamEnd::TimedOut(why.clone()),
                        Err(StreamError::Timeout(why)),
                    );
                }
                Next::ClientGone => break (StreamEnd::Dropped, Err(StreamError::ClientGone)),
            }
        };
        let WorkerStream {
            pool,
            lease,
            body,
            conn,
            ..
        } = self;
        let end = match end {
            // The whole answer was read: the connection may carry the next request.
            StreamEnd::Completed(_) => StreamEnd::Completed((!conn.is_closed()).then_some(conn)),
            other => {
                // Closing our side of the connection is how the worker learns to stop.
                drop(body);
                drop(conn);
                other
            }
        };
        match &result {
            Ok(()) => {}
            Err(StreamError::ClientGone) => {
                tracing::debug!(endpoint = %pool.endpoint(), bytes = total, "client gone mid-stream; worker connection closed")
            }
            Err(e) => {
                tracing::warn!(endpoint = %pool.endpoint(), bytes = total, cause = %e, "worker stream cut short")
            }
        }
        pool.stream_ended(lease, end);
        result
    }

    /// The next chunk (see [`relay::next_chunk`]).
    fn next(&mut self, sink: &BodySink, idle: Option<Duration>) -> Next {
        relay::next_chunk(self.pool.runtime(), &mut self.body, sink, self.until, idle)
    }
}
