//! The accept loop, written once: connection limit, per-connection hyper (HTTP/1.1 and HTTP/2),
//! graceful drain on shutdown.

use super::app::App;
use super::router::route;
use super::Ignored;
use crate::supervisor::{supervise_task, Backoff};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Serve `app` on `listener` until `shutdown` resolves, then drain: stop accepting, close every
/// queue (queued jobs are answered `503`), give running jobs `shutdown_grace`, kill any child still
/// alive, and let connections finish their last response.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let listener = Arc::new(listener);
    let graceful = Arc::new(GracefulShutdown::new());
    let builder = Arc::new(connection_builder(&app));
    let limit = Arc::new(Semaphore::new(app.server.max_connections.get()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let accept = {
        let (app, graceful, listener) = (app.clone(), graceful.clone(), listener.clone());
        tokio::spawn(supervise_task(
            "accept-loop",
            Backoff::default(),
            move || {
                accept_loop(
                    listener.clone(),
                    app.clone(),
                    builder.clone(),
                    graceful.clone(),
                    limit.clone(),
                    stop_rx.clone(),
                )
            },
        ))
    };

    shutdown.await;
    tracing::info!("shutting down: no new connections; draining");
    let _ = stop_tx.send(true);
    let _ = accept.await;
    app.close();
    crate::exec::children::begin_shutdown();

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
        crate::exec::children::kill_all();
        let hard = Instant::now() + Duration::from_secs(5);
        while !app.stopped() && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every job is answered now; let connections write their last responses.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
    }
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

async fn accept_loop(
    listener: Arc<TcpListener>,
    app: Arc<App>,
    builder: Arc<Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
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
        let conn_app = app.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let max_requests = app.server.max_requests_per_connection.get();
        let service = service_fn(move |req| {
            let app = conn_app.clone();
            let served = served.clone();
            async move {
                let logged = app.server.access_log.then(|| AccessLine::of(&req, remote));
                // HTTP/1 only: an HTTP/2 connection multiplexes and has no `Connection` header.
                let last = req.version() < hyper::Version::HTTP_2
                    && served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests;
                let mut answer = route(app.clone(), req, remote, local).await;
                if let (Some(line), Ok(resp)) = (logged, answer.as_ref()) {
                    line.write(&app, resp);
                }
                if last {
                    if let Ok(resp) = answer.as_mut() {
                        resp.headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                answer
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let app = app.clone();
        app.connection_opened();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                // Ignored overflow ends a connection on purpose: no log at all for it.
                if !is_ignored(e.as_ref()) {
                    tracing::trace!(client = %remote, cause = %e, "connection ended with an error");
                }
            }
            app.connection_closed();
        });
    }
}

/// What the access log needs from a request, taken before the request is consumed.
struct AccessLine {
    started: Instant,
    client: std::net::SocketAddr,
    method: hyper::Method,
    uri: hyper::Uri,
}

impl AccessLine {
    fn of<B>(req: &hyper::Request<B>, client: std::net::SocketAddr) -> AccessLine {
        AccessLine {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
        }
    }

    /// One structured line per answered request (ignored overflow never gets here).
    fn write(self, app: &App, resp: &hyper::Response<super::Body>) {
        use hyper::body::Body as _;
        let timing = resp
            .extensions()
            .get::<crate::job::JobTiming>()
            .copied()
            .unwrap_or_default();
        let path = self.uri.path();
        tracing::info!(
            target: "fiddler_crab::access",
            client = %self.client,
            method = %self.method,
            path,
            status = resp.status().as_u16(),
            bytes = resp.body().size_hint().exact().unwrap_or(0),
            queue_wait_ms = ms(timing.queue_wait),
            run_ms = ms(timing.run),
            total_ms = ms(self.started.elapsed()),
            mode = app.mode_of(path),
            light = app.light_name(),
        );
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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
