//! `TCP_DEFER_ACCEPT` on a listener: the kernel hands over a connection only once its client's
//! first bytes have come (or the wait has passed), as nginx's `listen ... deferred` and HAProxy's
//! `defer-accept` ask for.
//!
//! Without it, an accepted socket is usually empty for a moment on a fast network: the client's
//! request follows its handshake's last ACK, and the accept wins the race. tokio guesses the
//! opposite (an accepted socket starts as readable), so the first read fails with `EAGAIN` and the
//! connection's task waits for a second readiness event, each a system call and a wake-up more.
//! With it, the bytes are there at the accept: a connection per request is one accept, one read,
//! one write and the close, in one poll of its task (docs/BENCHMARKS.md 13.6).
//!
//! A client that connects and sends nothing costs the server nothing meanwhile: the kernel keeps it
//! as a pending request (bounded by the SYN backlog) and the accept loop never sees it. Once the
//! wait has passed, the kernel accepts it at the client's next ACK (its answer to a resent SYN-ACK)
//! and the server's own head deadline takes over. So a silent connection is closed after at most
//! about twice `header_read_timeout_ms`, and it counts against `max_connections` only from then.
//!
//! Linux only; elsewhere nothing is set.

use std::io;
use std::time::Duration;
use tokio::net::TcpListener;

/// Set `TCP_DEFER_ACCEPT` on `listener` for `wait`, in whole seconds (at least 1). The kernel
/// turns it into SYN-ACK retransmissions (1 s, then 3 s, 7 s...), so the real wait is the first of
/// those at or past `wait`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the crate's one exception: see the SAFETY comment and Cargo.toml
pub(super) fn defer_accept(listener: &TcpListener, wait: Duration) -> io::Result<()> {
    use nix::libc::{c_int, socklen_t};
    use std::os::fd::AsRawFd;
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = c_int::try_from(seconds.max(1)).unwrap_or(c_int::MAX);
    let size = socklen_t::try_from(std::mem::size_of::<c_int>()).unwrap_or(4);
    // SAFETY: setsockopt(2) reads `size` bytes at the pointer, which points at `seconds`, a local
    // `c_int` that lives across the call; the descriptor is the listener's, open while it is
    // borrowed. No memory is written. (std's `TcpStreamExt::set_deferaccept` is unstable, issue
    // 119639, and neither nix nor socket2 has the option.)
    let done = unsafe {
        nix::libc::setsockopt(
            listener.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            size,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Nothing to set off Linux.
#[cfg(not(target_os = "linux"))]
pub(super) fn defer_accept(_listener: &TcpListener, _wait: Duration) -> io::Result<()> {
    Ok(())
}

/// The wait a listener's `TCP_DEFER_ACCEPT` is set to, as the kernel reports it back (seconds).
#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)] // test only: reads the option back
fn deferred_seconds(listener: &TcpListener) -> io::Result<i32> {
    use nix::libc::{c_int, socklen_t};
    use std::os::fd::AsRawFd;
    let mut seconds: c_int = 0;
    let mut size = socklen_t::try_from(std::mem::size_of::<c_int>()).unwrap_or(4);
    // SAFETY: getsockopt(2) writes at most `size` bytes into `seconds`, a local `c_int`, and its
    // length into `size`; both outlive the call.
    let done = unsafe {
        nix::libc::getsockopt(
            listener.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            std::ptr::from_mut(&mut seconds).cast(),
            &mut size,
        )
    };
    if done == 0 {
        Ok(seconds)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_listener_defers_for_the_wait_in_whole_seconds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(deferred_seconds(&listener).unwrap(), 0, "off by default");
        defer_accept(&listener, Duration::from_millis(300)).unwrap();
        // The kernel reports the retransmission schedule's time at or past the wait: 1 s here.
        assert_eq!(deferred_seconds(&listener).unwrap(), 1);
        defer_accept(&listener, Duration::from_millis(2500)).unwrap();
        assert_eq!(deferred_seconds(&listener).unwrap(), 3);
    }
}
