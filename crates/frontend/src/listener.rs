//! The accept loop, written once: connection limit, per-connection hyper (HTTP/1.1 and HTTP/2),
//! graceful drain on shutdown.

use super::app::App;
use super::connections::{Activity, ConnectionTable, Watched};
use super::router::Role;
use super::service;
use super::Ignored;
use common::supervisor::{supervise_task, Backoff};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Open connections at most on the admin listener (probes and scrapes only).
const ADMIN_MAX_CONNECTIONS: usize = 64;

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

/// Serve `app` on `listener` until `shutdown` resolves; see [`serve_all`].
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_all(Listeners::main(listener), app, shutdown).await;
}

/// Serve `app` on every listener until `shutdown` resolves, then drain: stop accepting, close
/// every queue (queued jobs are answered `503`), give running jobs `shutdown_grace`, kill any
/// child still alive, and let connections finish their last response.
pub async fn serve_all(listeners: Listeners, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let connections = Arc::new(ConnectionTable::default());
    let sweeper = {
        let (connections, silent, idle) = (
            connections.clone(),
            app.server.header_read_timeout,
            app.server.idle_timeout,
        );
        tokio::spawn(supervise_task(
            "idle-sweeper",
            Backoff::default(),
            move || connections.clone().sweeper(silent, idle),
        ))
    };
    let builder = Arc::new(connection_builder(&app));
    let (stop_tx, stop_rx) = watch::channel(false);

    let main_role = if listeners.admin.is_some() {
        Role::Public
    } else {
        Role::PublicAndAdmin
    };
    let https_port = listeners.main.local_addr().map(|a| a.port()).unwrap_or(443);
    let tls = listeners.tls.map(Arc::new);
    // Each listener has its own connection limit, so a flood on the public port never locks the
    // probes on the admin port out (a liveness probe failing under attack would restart the pod).
    let max = app.server.max_connections.get();
    let mut loops = vec![(listeners.main, main_role, "accept-loop", max)];
    if let Some(admin) = listeners.admin {
        loops.push((
            admin,
            Role::Admin,
            "admin-accept-loop",
            ADMIN_MAX_CONNECTIONS,
        ));
    }
    if let Some(redirect) = listeners.redirect {
        loops.push((
            redirect,
            Role::Redirect(https_port),
            "redirect-accept-loop",
            max,
        ));
    }
    let accepts: Vec<_> = loops
        .into_iter()
        .map(|(listener, role, name, max)| {
            let listener = Arc::new(listener);
            let limit = Arc::new(Semaphore::new(max));
            let (app, connections, builder, limit, stop_rx, tls) = (
                app.clone(),
                connections.clone(),
                builder.clone(),
                limit,
                stop_rx.clone(),
                tls.clone(),
            );
            tokio::spawn(supervise_task(name, Backoff::default(), move || {
                accept_loop(
                    listener.clone(),
                    role,
                    tls.clone(),
                    app.clone(),
                    builder.clone(),
                    connections.clone(),
                    limit.clone(),
                    stop_rx.clone(),
                )
            }))
        })
        .collect();

    shutdown.await;
    tracing::info!("shutting down: no new connections; draining");
    let _ = stop_tx.send(true);
    for accept in accepts {
        let _ = accept.await;
    }
    app.close();
    app.children().begin_shutdown();

    let grace = app.server.shutdown_grace;
    let deadline = Instant::now() + grace;
    while !app.stopped() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !app.stopped() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "jobs still running after the grace period; killing children"
        );
        app.children().kill_all();
        let hard = Instant::now() + Duration::from_secs(5);
        while !app.stopped() && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every job is answered now; let connections write their last responses.
    connections.drain();
    let hard = Instant::now() + Duration::from_secs(5);
    while connections.live() > 0 && Instant::now() < hard {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if connections.live() > 0 {
        tracing::warn!(
            open = connections.live(),
            "some connections did not close in time"
        );
    }
    sweeper.abort();
    tracing::info!("stopped");
}

fn connection_builder(app: &App) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    let server = &app.server;
    // The header-read timer also runs while a keep-alive connection waits for its next request,
    // so it bounds idle connections too. A head over max_buf_size is answered 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.max_h2_streams)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(server.header_read_timeout))
        .keep_alive_timeout(server.header_read_timeout);
    builder
}

#[allow(clippy::too_many_arguments)] // the loop's whole context, passed once per restart
async fn accept_loop(
    listener: Arc<TcpListener>,
    role: Role,
    tls: Option<Arc<Tls>>,
    app: Arc<App>,
    builder: Arc<Builder<TokioExecutor>>,
    connections: Arc<ConnectionTable>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // At the connection limit, stop accepting: the kernel's backlog absorbs the flood.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stopped(&mut stop) => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let (builder, connections, tls) = (builder.clone(), connections.clone(), tls.clone());
        app.connection_opened();
        tokio::spawn(async move {
            let _permit = permit;
            match tls.filter(|_| role.serves_endpoints()) {
                None => {
                    let activity = Arc::new(Activity::default());
                    let service = service::for_connection(
                        app.clone(),
                        role,
                        remote,
                        local,
                        None,
                        activity.clone(),
                    );
                    // Watched on plain HTTP too: a slow reader of a large response makes
                    // progress only on the socket, long after its request was answered.
                    serve_io(
                        TokioIo::new(Watched::new(stream, activity.clone())),
                        service,
                        &builder,
                        &connections,
                        remote,
                        activity,
                    )
                    .await;
                }
                // A failed or stalled handshake costs this task at most the handshake timeout.
                Some(tls) => {
                    match crate::tls::handshake(&tls.acceptor, stream, tls.handshake_timeout).await
                    {
                        Ok(stream) => {
                            let activity = Arc::new(Activity::default());
                            let hsts = tls.hsts.clone();
                            let service = service::for_connection(
                                app.clone(),
                                role,
                                remote,
                                local,
                                hsts,
                                activity.clone(),
                            );
                            let io = TokioIo::new(Watched::new(stream, activity.clone()));
                            serve_io(io, service, &builder, &connections, remote, activity).await;
                        }
                        Err(e) => {
                            tracing::trace!(client = %remote, cause = %e, "TLS handshake failed")
                        }
                    }
                }
            }
            app.connection_closed();
        });
    }
}

/// Serve one connection (plain or TLS) with hyper until it ends, registered for the idle sweep
/// and the graceful drain (see [`super::connections`]).
async fn serve_io<I, S>(
    io: TokioIo<I>,
    service: S,
    builder: &Builder<TokioExecutor>,
    connections: &Arc<ConnectionTable>,
    remote: std::net::SocketAddr,
    activity: Arc<Activity>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<super::Body>,
            Error = Ignored,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let registration = connections.register(activity.clone());
    let conn = builder.serve_connection(io, service).into_owned();
    tokio::pin!(conn);
    let Some(ended) = registration.serve(&activity, conn).await else {
        tracing::trace!(client = %remote, "idle connection closed");
        return;
    };
    if let Err(e) = ended {
        // Ignored overflow ends a connection on purpose: no log at all for it.
        if !is_ignored(e.as_ref()) {
            tracing::trace!(client = %remote, cause = %e, "connection ended with an error");
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Connection-level errors concern one client and are nothing; others (such as running out of file
/// descriptors) are logged once and followed by a short pause so the loop does not spin.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::error!(cause = %e, "accept failed; pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
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
