//! One listener's accept loop: wait for a connection slot, accept, sort accept errors, and serve
//! each connection (plain or after a bounded TLS handshake) on one path.

use super::half_close::HalfClose;
use super::linger::SharedTcp;
use super::sniff::Served;
use super::stream::ClientStream;
use super::{Shared, Tls};
use crate::app::App;
use crate::connections::{Activity, Registration, Watched};
use crate::router::Role;
use crate::{service, Ignored};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// How long the loop pauses after an accept error that is not one client's (such as running out of
/// file descriptors), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At most one `ERROR` line per this period for accept errors; the others are counted (and logged
/// at `debug`), and the next `ERROR` line says how many there were.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One listener's accept loop and everything it needs: built once, run again by the supervisor
/// after a panic.
///
/// The listening socket is the loop's alone: the connection tasks share only [`Connections`], so
/// the socket closes as soon as the loop's task ends, even while connections still finish.
pub(super) struct AcceptLoop {
    socket: TcpListener,
    /// One permit per open connection: at the limit a new connection evicts a slow one, or the
    /// loop waits and the kernel's backlog absorbs the flood.
    limit: Arc<Semaphore>,
    errors: Mutex<ErrorLog>,
    connections: Arc<Connections>,
}

/// What each of a listener's connection tasks needs to serve it.
struct Connections {
    name: &'static str,
    role: Role,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    /// The listener's address when it names one IP: every connection's local address, known
    /// without a `getsockname` per connection (a wildcard listener asks each connection).
    local: Option<SocketAddr>,
}

impl AcceptLoop {
    /// The loop for `socket`, serving `role`, with at most `max` connections open at once.
    pub(super) fn new(
        name: &'static str,
        socket: TcpListener,
        role: Role,
        tls: Option<Tls>,
        max: usize,
        shared: Arc<Shared>,
    ) -> AcceptLoop {
        let local = socket
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        // Connections come with their first bytes (see `defer`); a failure costs only that.
        if let Err(e) = super::defer::defer_accept(&socket, shared.app.server.header_read_timeout) {
            tracing::debug!(listener = name, cause = %e, "TCP_DEFER_ACCEPT not set");
        }
        AcceptLoop {
            socket,
            limit: Arc::new(Semaphore::new(max)),
            errors: Mutex::new(ErrorLog::new(ACCEPT_ERROR_LOG_EVERY)),
            connections: Arc::new(Connections {
                name,
                role,
                tls,
                shared,
                local,
            }),
        }
    }

    /// The loop's name, for the supervisor and the logs.
    pub(super) fn name(&self) -> &'static str {
        self.connections.name
    }

    /// Accept and serve connections until the stop flag is set (or its sender is gone).
    pub(super) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                accepted = self.accept() => accepted,
                _ = stop.wait_for(|&stop| stop) => return,
            };
            let Some((open, stream, remote)) = accepted else {
                return;
            };
            // The door (public listener only: probes and scrapes keep their way in).
            let app = &self.connections.shared.app;
            if self.connections.role == Role::Public {
                tokio::select! {
                    () = app.door().pass(app) => {}
                    _ = stop.wait_for(|&stop| stop) => return,
                }
            }
            tokio::spawn(self.connections.clone().serve(open, stream, remote));
        }
    }

    /// Accept a connection and give it a slot; `None` once the slots are closed. At the limit,
    /// the new connection evicts a held connection, or else the oldest one that has never
    /// completed a request head (see
    /// [`crate::connections::ConnectionTable::evict_slowest`]) and waits for its slot; with none
    /// to evict, it waits for any slot, and the kernel's backlog holds the connections behind it.
    async fn accept(&self) -> Option<(OpenConnection, TcpStream, SocketAddr)> {
        let free = match self.limit.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::NoPermits) => None,
            Err(TryAcquireError::Closed) => return None,
        };
        let (stream, remote) = loop {
            match self.socket.accept().await {
                Ok(accepted) => break accepted,
                Err(e) => self.accept_failed(e).await,
            }
        };
        let shared = &self.connections.shared;
        let permit = match free {
            Some(permit) => permit,
            None => {
                if let Some(evicted) = shared.connections.evict_slowest(self.name()) {
                    tracing::debug!(
                        listener = self.name(),
                        ?evicted,
                        "at the connection limit: closed a held or a silent connection"
                    );
                }
                self.limit.clone().acquire_owned().await.ok()?
            }
        };
        Some((OpenConnection::new(&shared.app, permit), stream, remote))
    }

    /// Sort an accept error: one client's trouble (a reset before the accept) is nothing; anything
    /// else (out of file descriptors, out of memory) is logged, at most once per
    /// [`ACCEPT_ERROR_LOG_EVERY`], and followed by a short pause. The loop never ends on one.
    async fn accept_failed(&self, e: io::Error) {
        if concerns_one_client(&e) {
            return;
        }
        let logged = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(Instant::now());
        match logged {
            Some(suppressed) => tracing::error!(
                listener = self.name(),
                cause = %e,
                suppressed,
                "accept failed; pausing"
            ),
            None => tracing::debug!(
                listener = self.name(),
                cause = %e,
                "accept failed again; pausing"
            ),
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

impl Connections {
    /// Serve one accepted connection until it ends: the TLS handshake first if this listener has
    /// TLS (a failed or stalled one costs at most the handshake timeout), then hyper, registered
    /// in the connection table for the idle sweep and the drain.
    async fn serve(self: Arc<Self>, open: OpenConnection, tcp: TcpStream, remote: SocketAddr) {
        let Some(local) = self.local.or_else(|| tcp.local_addr().ok()) else {
            return;
        };
        // No `TCP_NODELAY` here: the socket sets it before its second write (see `linger.rs`).
        let tcp = SharedTcp::new(tcp);
        let (stream, hsts) = match &self.tls {
            None => (ClientStream::Plain(tcp.clone()), None),
            Some(tls) => {
                // Boxed: the handshake's state (rustls' connection) is large, and in this
                // future it would size every connection's task, plain ones too: a task's
                // future is copied when it is spawned and when it finishes.
                match Box::pin(crate::tls::handshake(
                    &tls.acceptor,
                    tcp.clone(),
                    tls.handshake_timeout,
                ))
                .await
                {
                    Ok(stream) => (ClientStream::Tls(Box::new(stream)), tls.hsts.clone()),
                    Err(e) => {
                        tracing::trace!(client = %remote, cause = %e, "TLS handshake failed");
                        return;
                    }
                }
            }
        };
        let shared = &self.shared;
        let activity = Arc::new(Activity::default());
        let service = service::for_connection(
            shared.app.clone(),
            self.role,
            remote,
            local,
            hsts,
            activity.clone(),
        );
        // Socket progress is counted on plain HTTP and TLS alike: a slow reader of a large
        // response makes progress only on the socket, long after its request was answered.
        let stream = HalfClose::new(stream, tcp.clone(), activity.clone());
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let registration = shared.connections.register(activity.clone(), self.name);
        // In a block of its own, so that hyper's connection and its buffers are gone before the
        // lingering close.
        let outcome = {
            // With upgrades: an upstream endpoint passes WebSocket sessions through.
            // Boxed: hyper's connection state is large, and in the task's future it would be
            // copied by every move of the future (spawning it, and finishing the task).
            let mut conn = Box::pin(Served::new(io, service, &shared.http1, &shared.builder));
            registration
                .serve(&activity, conn.as_mut(), |conn| {
                    conn.get_mut().graceful_shutdown()
                })
                .await
        };
        match outcome {
            None => tracing::trace!(client = %remote, "idle connection closed"),
            // Ignored overflow (HTTP/1; HTTP/2 resets the stream only) ends hyper's connection on
            // purpose, with no log line: the socket is held, unread, if the hold is on. In a task
            // of its own, which keeps only handles, a timer and a readiness wait, not this task's
            // state, which is sized for hyper's connection.
            Some(Err(e)) if is_ignored(e.as_ref()) => {
                let hold = shared.app.server.overflow_hold;
                if !hold.is_zero() {
                    let until = coarse(Instant::now() + hold);
                    tokio::spawn(held(
                        shared.app.clone(),
                        (open, tcp, registration, activity),
                        until,
                        remote,
                    ));
                }
            }
            Some(Err(e)) => {
                tracing::trace!(client = %remote, cause = %e, "connection ended with an error");
            }
            // hyper closed it after its last answer (`Connection: close`, the client's own
            // close, GOAWAY): linger, so that input the client sent after it does not turn the
            // close into a reset that destroys the answers. It still holds its slot meanwhile.
            // A plain HTTP/1 client whose last request had no body and asked for the close
            // sends nothing more: closed at once if nothing is left to read (see
            // `SharedTcp::close`).
            Some(Ok(())) => {
                drop(registration);
                match activity.take_session() {
                    // Handed to an upgrade session: the socket is its now, and the connection
                    // keeps its slot under max_connections until the session ends.
                    Some(session) => {
                        let _ = session.await;
                    }
                    None => {
                        let quiet = self.tls.is_none() && activity.client_closes();
                        tcp.close(quiet).await;
                    }
                }
            }
        }
    }
}

/// The grain of held connections' deadlines: rounded up to it, the holds of a flood end
/// together, a few wake-ups of the runtime a second instead of one per held connection.
const HOLD_GRAIN: Duration = Duration::from_millis(50);

/// `deadline` rounded up to the next multiple of [`HOLD_GRAIN`] since a fixed instant (the
/// first call's).
fn coarse(deadline: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let grain = HOLD_GRAIN.as_nanos();
    let rounded = since.div_ceil(grain).saturating_mul(grain);
    u64::try_from(rounded)
        .ok()
        .and_then(|nanos| epoch.checked_add(Duration::from_nanos(nanos)))
        .unwrap_or(deadline)
}

/// Hold an overflowed connection (see [`crate::hold`]) until `until`, its client's close, its
/// eviction or the drain; then close it without a byte (the socket first, then its slot).
async fn held(
    app: Arc<App>,
    (open, tcp, registration, activity): (OpenConnection, SharedTcp, Registration, Arc<Activity>),
    until: Instant,
    remote: SocketAddr,
) {
    app.hold().start();
    let end = registration.hold(&activity, until, tcp.closed()).await;
    app.hold().end(end);
    tracing::trace!(client = %remote, ?end, "held connection closed");
    drop(registration);
    drop(tcp);
    drop(open);
}

/// An accepted connection: holds its slot under the listener's limit and counts it open in the
/// app until dropped (however its task ends).
struct OpenConnection {
    app: Arc<App>,
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(app: &Arc<App>, slot: OwnedSemaphorePermit) -> OpenConnection {
        app.connection_opened();
        OpenConnection {
            app: app.clone(),
            _slot: slot,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.app.connection_closed();
    }
}

/// True for an accept error that concerns one client only (it reset or went away before the
/// accept): nothing to log, nothing to wait for.
fn concerns_one_client(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

fn is_ignored(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<Ignored>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Rate limit for the accept-error log: the first error of a period is logged, the rest of the
/// period's are counted.
#[derive(Debug)]
struct ErrorLog {
    every: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(every: Duration) -> ErrorLog {
        ErrorLog {
            every,
            last_logged: None,
            suppressed: 0,
        }
    }

    /// An error at `now`: `Some(n)` if it is to be logged, `n` being how many were suppressed
    /// since the last logged one; `None` if it is only counted.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_accept_error_line_per_period_and_the_next_counts_the_suppressed() {
        let every = Duration::from_secs(10);
        let mut log = ErrorLog::new(every);
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(0), "the first error is logged");
        // An error every 100 ms for the rest of the period: counted, not logged.
        for i in 1..100 {
            assert_eq!(log.failed(t0 + Duration::from_millis(100) * i), None);
        }
        assert_eq!(log.failed(t0 + every), Some(99));
        assert_eq!(log.failed(t0 + every + Duration::from_secs(1)), None);
        // A quiet spell longer than the period: the next error is logged at once.
        assert_eq!(log.failed(t0 + every * 5), Some(1));
    }

    #[test]
    fn a_clients_own_accept_errors_are_nothing_and_the_rest_are_not() {
        use io::ErrorKind::*;
        for kind in [
            ConnectionAborted,
            ConnectionReset,
            ConnectionRefused,
            Interrupted,
        ] {
            assert!(concerns_one_client(&io::Error::from(kind)), "{kind:?}");
        }
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert!(!concerns_one_client(&emfile));
        assert!(!concerns_one_client(&io::Error::from(OutOfMemory)));
    }
}
