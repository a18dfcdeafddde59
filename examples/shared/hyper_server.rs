//! The server side that `bare_hyper.rs` and `bare_hyper_proxy.rs` share: hyper-util's auto
//! builder configured as fiddler_crab's accept loop configures it, so that what they are compared
//! with differs in what it does per request, not in how hyper is set up.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::time::Duration;

/// fiddler_crab's defaults for `server.header_read_timeout_ms` and `server.max_header_bytes`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The builder with fiddler_crab's HTTP/1 settings (header-read timer of 10 s, 16 KiB head limit,
/// no half-close), or with `plain` the builder's defaults.
pub fn builder(plain: bool) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    if !plain {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .half_close(false);
    }
    builder
}

/// The next connection on `listener`, with `TCP_NODELAY` as fiddler_crab sets it.
pub async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _remote)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            // Out of descriptors or similar: the benchmarks never get here; do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
