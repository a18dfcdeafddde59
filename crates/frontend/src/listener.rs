//! The listeners: one accept loop per bound socket (see [`accept`]), and the graceful drain once
//! the shutdown future resolves.
//!
//! # Layout
//! - `accept`: [`accept::AcceptLoop`], one socket's loop: connection limit, accept errors,
//!   optional TLS handshake, one serve path for every connection.
//! - `half_close`: [`half_close::HalfClose`], which answers a client that half-closed after its
//!   request and still sees one that closed fully leave.
//! - `linger`: the shared socket and the close after the last answer: at once when the client
//!   sends nothing more and nothing is unread, else the lingering close (read and discard for a
//!   bounded time, so that closing does not reset the connection and destroy unread answers);
//!   `TCP_NODELAY` set before a connection's second write.
//! - `sniff`: [`sniff::Served`], HTTP/1 or HTTP/2 told by the first read, which hyper's first
//!   read then gets whole.
//! - `stream`: [`stream::ClientStream`], plain TCP or TLS as one I/O type.

mod accept;
mod defer;
mod half_close;
mod linger;
mod sniff;
mod stream;

use super::app::App;
use super::connections::ConnectionTable;
use super::router::Role;
use accept::AcceptLoop;
use common::supervisor::{supervise_task, Backoff};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Open connections at most on the admin listener (probes and scrapes only).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long jobs have to report after their children were killed at the end of the grace period.
const KILLED_JOBS_LIMIT: Duration = Duration::from_secs(5);

/// How long connections have to write their last responses once every job is answered.
const CONNECTION_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The sockets a server listens on, already bound.
#[derive(Debug)]
pub struct Listeners {
    /// Serves the endpoints (and the server's own paths unless an admin listener is given).
    pub main: TcpListener,
    /// Serves only `/status`, `/metrics`, `/healthz` and `/readyz` (for example on 127.0.0.1).
    pub admin: Option<TcpListener>,
    /// Plain HTTP that redirects every request to HTTPS on the main listener (`308`).
    pub redirect: Option<TcpListener>,
    /// HTTPS on the main listener.
    pub tls: Option<Tls>,
}

impl Listeners {
    /// Just a main listener, plain HTTP.
    pub fn main(listener: TcpListener) -> Listeners {
        Listeners {
            main: listener,
            admin: None,
            redirect: None,
            tls: None,
        }
    }
}

/// HTTPS on the main listener: the acceptor (whose certificate store SIGHUP reloads), the
/// handshake deadline, and the HSTS header to add, if any.
#[derive(Clone)]
pub struct Tls {
    /// The rustls acceptor, built once from [`crate::tls::server_config`].
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` value for every HTTPS response.
    pub hsts: Option<hyper::header::HeaderValue>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("hsts", &self.hsts)
            .finish()
    }
}

impl Tls {
    /// HTTPS from a certificate store and the config's settings.
    pub fn new(
        store: Arc<crate::tls::CertStore>,
        handshake_timeout: Duration,
        hsts_max_age: Option<u64>,
    ) -> Tls {
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(crate::tls::server_config(store)),
            handshake_timeout,
            hsts: hsts_max_age.and_then(|age| {
                hyper::header::HeaderValue::from_str(&format!("max-age={age}")).ok()
            }),
        }
    }
}

/// What every connection of a server shares, whichever listener accepted it.
#[derive(Debug)]
struct Shared {
    app: Arc<App>,
    /// hyper's HTTP/1.1 and HTTP/2 settings (deadlines, header size, h2 limits), for a
    /// connection that may be HTTP/2.
    builder: Builder<TokioExecutor>,
    /// The same HTTP/1.1 settings, for a connection whose first bytes say HTTP/1.
    http1: hyper::server::conn::http1::Builder,
    /// Every open connection: for the idle sweep and the drain.
    connections: Arc<ConnectionTable>,
}

/// Serve `app` on `listener` until `shutdown` resolves; see [`serve_all`].
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_all(Listeners::main(listener), app, shutdown).await;
}

/// Serve `app` on every listener until `shutdown` resolves, then drain: stop accepting, close
/// every queue (queued jobs are answered `503`), give running jobs `shutdown_grace`, kill any
/// child still alive, and let connections finish their last response. Returns as soon as the
/// last connection has closed.
pub async fn serve_all(listeners: Listeners, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let connections = Arc::new(ConnectionTable::default());
    let sweeper = {
        let (connections, silent, idle, send) = (
            connections.clone(),
            app.server.header_read_timeout,
            app.server.idle_timeout,
            app.server.send_timeout,
        );
        tokio::spawn(supervise_task(
            "idle-sweeper",
            Backoff::default(),
            move || connections.clone().sweeper(silent, idle, send),
        ))
    };
    let shared = Arc::new(Shared {
        builder: connection_builder(&app),
        http1: http1_builder(&app),
        app: app.clone(),
        connections: connections.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let accepts: Vec<_> = accept_loops(listeners, &shared)
        .into_iter()
        .map(|accept| {
            let accept = Arc::new(accept);
            let stop = stop_rx.clone();
            tokio::spawn(supervise_task(
                accept.name(),
                Backoff::default(),
                move || accept.clone().run(stop.clone()),
            ))
        })
        .collect();

    shutdown.await;
    tracing::info!("shutting down: no new connections; draining");
    let _ = stop_tx.send(true);
    for accept in accepts {
        let _ = accept.await;
    }
    drain(&app, &connections).await;
    sweeper.abort();
    tracing::info!("stopped");
}

/// One accept loop per listener. Each has its own connection limit, so a flood on the public port
/// never locks the probes on the admin port out (a liveness probe failing under attack would
/// restart the pod). TLS, when configured, is on the main listener only.
fn accept_loops(listeners: Listeners, shared: &Arc<Shared>) -> Vec<AcceptLoop> {
    let max = shared.app.server.max_connections.get();
    let https_port = listeners.main.local_addr().map(|a| a.port()).unwrap_or(443);
    let main_role = if listeners.admin.is_some() {
        Role::Public
    } else {
        Role::PublicAndAdmin
    };
    let mut loops = vec![AcceptLoop::new(
        "accept-loop",
        listeners.main,
        main_role,
        listeners.tls,
        max,
        shared.clone(),
    )];
    if let Some(admin) = listeners.admin {
        loops.push(AcceptLoop::new(
            "admin-accept-loop",
            admin,
            Role::Admin,
            None,
            ADMIN_MAX_CONNECTIONS,
            shared.clone(),
        ));
    }
    if let Some(redirect) = listeners.redirect {
        loops.push(AcceptLoop::new(
            "redirect-accept-loop",
            redirect,
            Role::Redirect(https_port),
            None,
            max,
            shared.clone(),
        ));
    }
    loops
}

/// The drain, once no listener accepts any more: jobs first, then connections. Connections stay
/// open while jobs run, so a probe on a kept-open connection still gets its `503 shutting-down`.
async fn drain(app: &App, connections: &ConnectionTable) {
    app.close();
    app.children().begin_shutdown();
    let grace = app.server.shutdown_grace;
    if tokio::time::timeout(grace, jobs_stopped(app))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "jobs still running after the grace period; killing children"
        );
        app.children().kill_all();
        let _ = tokio::time::timeout(KILLED_JOBS_LIMIT, jobs_stopped(app)).await;
    }
    // Every job is answered now; let connections write their last responses.
    connections.drain();
    if tokio::time::timeout(CONNECTION_DRAIN_LIMIT, connections.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.live(),
            "some connections did not close in time"
        );
    }
}

/// Resolves once every endpoint's dispatcher, retired ones included, has stopped.
async fn jobs_stopped(app: &App) {
    app.all_stopped().await;
}

/// The HTTP/1 settings, on the `auto` builder's HTTP/1 half and on hyper's own HTTP/1 builder
/// alike (the two types have the same setters, and no common trait). A head over max_buf_size is
/// answered 431 by hyper; `max_buf_size` is `io_buffer_bytes`, `max_header_bytes` unless set
/// larger, and then the router answers a parsed head over `max_header_bytes` 431 itself.
///
/// Each answer is written as one buffer (head and body copied together, one `write`), not
/// queued for a vectored write: for small answers the queue's bookkeeping cost more than the copy
/// (about 430 user-space instructions of a `/ping`), and a 256 KiB echo cost no more CPU
/// (docs/BENCHMARKS.md 16.4). hyper suggests the same for TLS, which copies anyway. The buffer
/// keeps its largest size for the connection's life, and stays bounded: hyper buffers body
/// data only while it holds less than `max_buf_size` (`io_buffer_bytes`), and every body comes
/// to it in frames of at most [`super::unsent::SLICE`] (16 KiB).
///
/// No timer, and no header-read timeout of hyper's: `header_read_timeout` is the connection
/// table's head deadline (see `connections.rs`, `ConnectionTable::sweep`), which like hyper's
/// timer also runs while a keep-alive connection waits for its next request. hyper's timer cost
/// a boxed `Sleep` registered with the runtime's timer and removed again for every request read
/// (about 650 user-space instructions of a keep-alive `/ping`'s 10,000); the sweep reads three
/// counters per connection a few times per period.
macro_rules! http1_settings {
    ($builder:expr, $server:expr) => {
        $builder
            .header_read_timeout(None)
            .writev(false)
            .max_buf_size($server.io_buffer_bytes)
            .half_close(false)
    };
}

/// hyper's HTTP/1 builder, for the connections whose first bytes say HTTP/1 (see [`sniff`]).
fn http1_builder(app: &App) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    http1_settings!(builder, app.server);
    builder
}

fn connection_builder(app: &App) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    let server = &app.server;
    http1_settings!(builder.http1(), server);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.max_h2_streams)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(server.header_read_timeout))
        .keep_alive_timeout(server.header_read_timeout);
    builder
}
