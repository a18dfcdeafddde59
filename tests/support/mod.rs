//! Test support: a real fiddler_crab server started from a config string on port 0, a real
//! HTTP/1 client (one fresh connection per request), and handlers whose timing the test controls.
//!
//! - `server`: [`TestServer`]: start, talk to, look inside (`app`, counters, status), reload,
//!   shut down; [`Launch`] starts one with a fixed traffic light, a readiness clock, an admin or
//!   redirect listener, TLS.
//! - `client`: [`Client`], a copyable handle for requests from spawned tasks; [`Reply`] is what
//!   came back; [`H1Conn`] and [`H2Conn`] keep one connection open across requests;
//!   [`Client::open`] and [`next_chunk`] read a streamed body chunk by chunk.
//! - `recorders`: [`Recorder`] records every run (id, start, end), holds requests marked `x-hold`
//!   on its [`Gate`] until the test releases them, panics on `x-panic`; [`Panicker`] panics when
//!   the body says `panic`.
//! - `system`: [`free_port`], [`TempDir`], [`is_dead`].
//! - [`wait_until`]: poll a condition; the only bound is [`PATIENCE`], which detects hangs.
//! - [`binary`]: the real binary as a child process, its log collected.
//! - [`tls`]: certificates and HTTPS clients (HTTP/1.1 or HTTP/2 by ALPN).
#![allow(dead_code, unused_imports)]

pub mod binary;
mod client;
mod recorders;
mod server;
mod system;
pub mod tls;

pub use client::{
    next_chunk, raw_post, read_exactly, read_to_close, request, Client, H1Conn, H2Conn, Reply,
};
pub use recorders::{held_job, job, panicking_job, registry, Gate, Panicker, Recorder, Run};
pub use server::{Launch, TestServer};
pub use system::{free_port, is_dead, make_fifo, release_fifo, TempDir};

use std::time::{Duration, Instant};

/// The longest a test waits for anything. Only turns a hang into a failure; never a speed claim.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Poll `condition` until it holds; fail after [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Await `future`, failing after [`PATIENCE`] instead of hanging.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}
