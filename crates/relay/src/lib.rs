//! The HTTP/1.1 relay pieces that warm workers (`workers`) and upstream endpoints (`upstream`)
//! share: one client, written once.
//!
//! # Layout
//! - [`conn`]: the I/O runtime, a connection to a [`Target`] (TCP, TLS over TCP, or Unix socket), whether a
//!   kept-alive one is still usable, and [`send`] with its rule: a request is sent again only if it was never written.
//! - [`message`]: the request as a proxy forwards it (hop-by-hop headers removed per RFC 9110
//!   section 7.6.1, `X-Forwarded-For`/`-Proto`) and the answer's head and bounded body back.
//! - [`stream`]: a streamed answer's next chunk for a producer, bounded in time, client watched.
#![deny(missing_docs)]

pub mod conn;
pub mod message;
pub mod stream;

pub use conn::{
    ack_if_late, connect, connect_as, io_runtime, is_tls_failure, probe, probe_kept, send, usable,
    within_keepalive, AckIfLate, Conn, Sent, Target, TlsTo,
};
pub use message::{
    answer_head, answer_head_framed, outgoing, outgoing_with, path_and_query, read_bounded,
    read_bounded_declared, strip_hop_by_hop, BodyError, Forwarding,
};
pub use stream::{next_chunk, Next};
