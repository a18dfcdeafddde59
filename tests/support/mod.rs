//! Test support: a real fiddler_crab server started from a config string on port 0, a real
//! HTTP/1 client (one fresh connection per request), and handlers whose timing the test controls.
//!
//! - [`TestServer`]: start, talk to, look inside (`app`, counters, status), reload, shut down;
//!   [`Launch`] starts one with a fixed traffic light and/or an admin listener.
//! - [`Client`]: a copyable handle for requests from spawned tasks; [`Reply`] is what came back.
//!   [`H1Conn`] and [`H2Conn`] keep one connection open across requests.
//! - [`Recorder`]: records every run (id, start, end), holds requests marked `x-hold` on its
//!   [`Gate`] until the test releases them, panics on `x-panic`.
//! - [`Panicker`]: panics when the body says `panic`.
//! - [`wait_until`]: poll a condition; the only bound is [`PATIENCE`], which detects hangs.
//! - [`tls`]: certificates, HTTPS clients (HTTP/1.1 or HTTP/2 by ALPN) and the real binary.
#![allow(dead_code)]

pub mod tls;

use bytes::Bytes;
use common::counters::CountersSnapshot;
use common::endpoint::{Endpoint, EndpointStatus};
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use fiddler_crab::config::Config;
use fiddler_crab::{HandlerRegistry, ReloadSummary, Reloader, Server};
use frontend::App;
use frontend::{Listeners, Tls};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use light::TrafficLight;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest a test waits for anything. Only turns a hang into a failure; never a speed claim.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A server running on the test's runtime, listening on 127.0.0.1 at a port the OS picked.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the admin listener listens, if it was started with one ([`Launch::admin`]).
    pub admin: Option<SocketAddr>,
    /// Where the plain-HTTP redirect listener listens, if started with one ([`Launch::redirect`]).
    pub redirect: Option<SocketAddr>,
    /// Its endpoints and counters.
    pub app: Arc<App>,
    reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// How to start a [`TestServer`] beyond its config: handlers, a fixed traffic light, an admin
/// listener. `TestServer::launch(toml).registry(&r).light(&light).admin().start().await`.
#[must_use]
pub struct Launch {
    toml: String,
    registry: HandlerRegistry,
    light: Option<TrafficLight>,
    admin: bool,
    tls: Option<Tls>,
    redirect: bool,
}

impl Launch {
    /// Resolve `builtin = "..."` names in `registry` (default: the builtins only).
    pub fn registry(mut self, registry: &HandlerRegistry) -> Launch {
        self.registry = registry.clone();
        self
    }

    /// Use `light` (typically [`TrafficLight::fixed`]) instead of sampling the machine, so
    /// decisions do not depend on its load; the test flips it with [`TrafficLight::set`].
    pub fn light(mut self, light: &TrafficLight) -> Launch {
        self.light = Some(light.clone());
        self
    }

    /// Also serve an admin listener (status, metrics, probes) on its own port 0.
    pub fn admin(mut self) -> Launch {
        self.admin = true;
        self
    }

    /// Serve HTTPS on the main listener with `tls` (certificate store, handshake timeout, HSTS).
    /// [`TestServer::client`] still speaks plain HTTP: use [`tls::Https`] against it.
    pub fn tls(mut self, tls: Tls) -> Launch {
        self.tls = Some(tls);
        self
    }

    /// Also serve the plain-HTTP listener that redirects to HTTPS (`308`) on its own port 0.
    pub fn redirect(mut self) -> Launch {
        self.redirect = true;
        self
    }

    /// Build the server and serve it on the test's runtime. The config's `listen` and
    /// `admin_listen` are ignored: every listener is a fresh port 0 one.
    pub async fn start(self) -> TestServer {
        let config = Config::from_toml(&self.toml, "test.toml")
            .unwrap_or_else(|e| panic!("the test config is invalid: {e}"));
        let server = match self.light {
            Some(light) => Server::build_with_light(&config, &self.registry, light),
            None => Server::build(&config, &self.registry),
        }
        .unwrap_or_else(|e| panic!("the server cannot be built: {e}"));
        let app = server.app().clone();
        let reloader = server.reloader();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("listener address");
        let mut listeners = Listeners::main(listener);
        let mut admin = None;
        if self.admin {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
            admin = Some(listener.local_addr().expect("admin listener address"));
            listeners.admin = Some(listener);
        }
        let mut redirect = None;
        if self.redirect {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
            redirect = Some(listener.local_addr().expect("redirect listener address"));
            listeners.redirect = Some(listener);
        }
        listeners.tls = self.tls;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_all(listeners, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            admin,
            redirect,
            app,
            reloader,
            stop: Some(stop),
            task,
        }
    }
}

impl TestServer {
    /// Start a server for `toml` with the builtin handlers only.
    pub async fn start(toml: &str) -> TestServer {
        TestServer::start_with(toml, &HandlerRegistry::default()).await
    }

    /// Start a server for `toml` whose `builtin = "..."` names resolve in `registry`.
    /// The config's `listen` is ignored: the server gets a fresh port 0 listener.
    pub async fn start_with(toml: &str, registry: &HandlerRegistry) -> TestServer {
        TestServer::launch(toml).registry(registry).start().await
    }

    /// Start a server for `toml` with more options; see [`Launch`].
    pub fn launch(toml: &str) -> Launch {
        Launch {
            toml: toml.to_string(),
            registry: HandlerRegistry::default(),
            light: None,
            admin: false,
            tls: None,
            redirect: false,
        }
    }

    /// A handle for requests to the admin listener.
    pub fn admin_client(&self) -> Client {
        Client {
            addr: self
                .admin
                .expect("the server was started without an admin listener"),
        }
    }

    /// Apply `toml` to the running server as a config reload (what SIGHUP does).
    pub fn reload(&self, toml: &str) -> ReloadSummary {
        self.try_reload(toml)
            .unwrap_or_else(|e| panic!("the reload was refused: {e}"))
    }

    /// Apply `toml` (which must parse) as a config reload; the server may refuse it.
    pub fn try_reload(&self, toml: &str) -> Result<ReloadSummary, fiddler_crab::BuildError> {
        let config = Config::from_toml(toml, "reload.toml")
            .unwrap_or_else(|e| panic!("the reload config is invalid: {e}"));
        self.reloader.apply(&config)
    }

    /// A handle for sending requests, also from spawned tasks.
    pub fn client(&self) -> Client {
        Client { addr: self.addr }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.client().get(path).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.client().post(path, body).await
    }

    /// Write `request` as-is on a fresh connection and read until the server closes it.
    pub async fn raw(&self, request: &[u8]) -> Vec<u8> {
        self.client().raw(request).await
    }

    /// `GET /status`, parsed.
    pub async fn status_json(&self) -> serde_json::Value {
        let reply = self.get("/status").await;
        assert_eq!(reply.status, StatusCode::OK, "/status answered {reply:?}");
        serde_json::from_slice(&reply.body).expect("/status is JSON")
    }

    /// The running endpoint at `path`.
    pub fn endpoint(&self, path: &str) -> Arc<Endpoint> {
        self.app
            .endpoints()
            .iter()
            .find(|e| e.config.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {path} in the test config"))
    }

    /// The endpoint's status line, read directly (no request).
    pub fn status_of(&self, path: &str) -> EndpointStatus {
        self.endpoint(path).status()
    }

    /// The endpoint's counters now.
    pub fn counters(&self, path: &str) -> CountersSnapshot {
        self.endpoint(path).counters()
    }

    /// Wait until exactly `n` jobs are admitted and not yet started at `path`.
    pub async fn wait_queued(&self, path: &str, n: usize) {
        let endpoint = self.endpoint(path);
        wait_until(&format!("{n} jobs queued at {path}"), || {
            endpoint.admission().queue_depth() == n
        })
        .await;
    }

    /// Wait until `n` connections are open (as the server counts them).
    pub async fn wait_open_connections(&self, n: usize) {
        let app = self.app.clone();
        wait_until(&format!("{n} open connections"), || {
            app.open_connections() == n
        })
        .await;
    }

    /// Resolve the shutdown future; [`TestServer::join`] then waits for `run` to return.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Wait for `run` to return, re-raising a panic from it.
    pub async fn join(self) {
        match tokio::time::timeout(PATIENCE, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("the server task was cancelled: {e}"),
            Err(_) => panic!("the server did not stop within {PATIENCE:?} of shutdown"),
        }
    }

    /// End the test without shutting the server down: its task is dropped with the runtime.
    ///
    /// For tests of exec endpoints: a shutdown marks the process-wide registry of exec children
    /// (`exec::children`) as shutting down, which would turn other tests' killed children
    /// into 503s (and, past the grace period, kill every child started afterwards).
    pub fn leave_running(mut self) {
        std::mem::forget(self.stop.take());
    }

    /// Shut down and wait for `run` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.join().await;
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// The HTTP version it came in.
    pub version: hyper::Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// A copyable handle to a server's address: one fresh HTTP/1.1 connection per request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The server's address.
    pub addr: SocketAddr,
}

impl Client {
    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(request("GET", path, Bytes::new())).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(request("POST", path, body.into())).await
    }

    /// Send `req`; the server must answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer: {e:?}"),
        }
    }

    /// Send `req`; an error means the connection ended without a (complete) answer.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let stream = TcpStream::connect(self.addr).await.expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(conn);
            let response: Response<hyper::body::Incoming> = sender.send_request(req).await?;
            let reply = read_reply(response).await?;
            drop(sender);
            driver.abort();
            Ok(reply)
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Send `req` from a new task; await the handle for the reply.
    pub fn spawn(&self, req: Request<Full<Bytes>>) -> JoinHandle<Reply> {
        let client = *self;
        tokio::spawn(async move { client.send(req).await })
    }

    /// Write `request` as-is on a fresh connection and read until the server closes it. A reset
    /// ends the read like a close does: either way, what was read is all the server sent.
    pub async fn raw(&self, request: &[u8]) -> Vec<u8> {
        read_to_close(self.open_raw(request).await).await
    }

    /// Open a connection and write `request` on it; the caller reads, or drops it to leave.
    pub async fn open_raw(&self, request: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(request).await.expect("write request");
        stream
    }

    /// Open one HTTP/1.1 connection to send several requests on, one after another.
    pub async fn connect_h1(&self) -> H1Conn {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        H1Conn {
            sender,
            driver: tokio::spawn(conn),
        }
    }

    /// Open one HTTP/2 connection with prior knowledge (h2c); its streams run concurrently.
    pub async fn connect_h2(&self) -> H2Conn {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        H2Conn {
            addr: self.addr,
            sender,
            driver: Arc::new(tokio::spawn(conn)),
        }
    }
}

/// Collect a response's whole body into a [`Reply`].
async fn read_reply(response: Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One HTTP/1.1 connection kept open across requests (keep-alive).
pub struct H1Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

impl H1Conn {
    /// Send `req` on this connection; the server must answer.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer on the kept-open connection: {e:?}"),
        }
    }

    /// Send `req` on this connection; an error means it ended without a (complete) answer.
    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            self.sender.ready().await?;
            read_reply(self.sender.send_request(req).await?).await
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Wait until the server has closed the connection (the client's driver ends); fails after
    /// [`PATIENCE`].
    pub async fn closed(mut self) {
        // The sender stays alive meanwhile, so the client does not close the connection itself.
        let _ = within("the server to close the connection", &mut self.driver).await;
    }
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One HTTP/2 (h2c, prior knowledge) connection; clones share it, each request is a stream.
#[derive(Clone)]
pub struct H2Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: Arc<JoinHandle<Result<(), hyper::Error>>>,
}

impl H2Conn {
    /// Send `req` as a new stream; the server must answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer on the HTTP/2 connection: {e:?}"),
        }
    }

    /// Send `req` as a new stream; an error means the stream (or the connection) was reset.
    pub async fn try_send(&self, mut req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        // HTTP/2 carries scheme and authority as pseudo-headers: give the request an absolute URI.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        *req.uri_mut() = format!("http://{}{path}", self.addr)
            .parse()
            .expect("an absolute URI");
        req.headers_mut().remove(HOST);
        let mut sender = self.sender.clone();
        let exchange = async {
            sender.ready().await?;
            read_reply(sender.send_request(req).await?).await
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Send `req` as a new stream from a new task; await the handle for the outcome.
    pub fn spawn(&self, req: Request<Full<Bytes>>) -> JoinHandle<Result<Reply, hyper::Error>> {
        let conn = self.clone();
        tokio::spawn(async move { conn.try_send(req).await })
    }

    /// True while the connection is open.
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        if Arc::strong_count(&self.driver) == 1 {
            self.driver.abort();
        }
    }
}

/// Read `stream` until the server closes it (or resets it: either way, what was read is all the
/// server sent); fails after [`PATIENCE`].
pub async fn read_to_close(mut stream: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("raw read failed: {e}"),
            }
        }
    };
    if tokio::time::timeout(PATIENCE, read).await.is_err() {
        panic!("the server neither answered nor closed the connection within {PATIENCE:?}");
    }
    received
}

/// A port that was free a moment ago (for the real binary, which must be told where to listen).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// A request with a `Host` header.
pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "fiddler.test")
        .body(Full::new(body.into()))
        .expect("a valid request")
}

/// `POST path` for a [`Recorder`] job named `id`.
pub fn job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = request("POST", path, Bytes::new());
    req.headers_mut()
        .insert("x-id", id.parse().expect("an id fit for a header"));
    req
}

/// A [`Recorder`] job that waits on the gate until the test releases it.
pub fn held_job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = job(path, id);
    req.headers_mut()
        .insert("x-hold", hyper::header::HeaderValue::from_static("1"));
    req
}

/// A [`Recorder`] job whose handler panics.
pub fn panicking_job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = job(path, id);
    req.headers_mut()
        .insert("x-panic", hyper::header::HeaderValue::from_static("1"));
    req
}

/// The bytes of a `POST path` with an empty body and `Connection: close`, for raw sends.
pub fn raw_post(path: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A registry with the builtins and `handler` as `builtin = "name"`.
pub fn registry(name: &str, handler: Arc<dyn Handler>) -> HandlerRegistry {
    let mut registry = HandlerRegistry::default();
    registry.register(name, handler);
    registry
}

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

/// A gate that handler threads wait at until the test lets them through, one at a time.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: Vec<String>,
    permits: usize,
    open: bool,
}

impl Gate {
    /// Longest a handler waits at the gate, so a failed test does not leave a thread blocked.
    const MAX_HOLD: Duration = Duration::from_secs(60);

    /// Called by a handler: announce `id`, then block until released.
    pub fn hold(&self, id: &str) {
        let mut state = self.lock();
        state.arrived.push(id.to_string());
        self.changed.notify_all();
        let deadline = Instant::now() + Self::MAX_HOLD;
        while !state.open && state.permits == 0 && Instant::now() < deadline {
            state = match self.changed.wait_timeout(state, Duration::from_millis(100)) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        if !state.open && state.permits > 0 {
            state.permits -= 1;
        }
    }

    /// Wait until `n` handlers have arrived at the gate (in total), for example 1: the runner is
    /// now busy with a held job.
    pub async fn wait_arrived(&self, n: usize) {
        wait_until(&format!("{n} jobs arrived at the gate"), || {
            self.lock().arrived.len() >= n
        })
        .await;
    }

    /// Ids in the order they arrived.
    pub fn arrived(&self) -> Vec<String> {
        self.lock().arrived.clone()
    }

    /// Let one waiting (or the next arriving) handler through.
    pub fn release(&self) {
        self.lock().permits += 1;
        self.changed.notify_all();
    }

    /// Let every handler through, now and later.
    pub fn open(&self) {
        self.lock().open = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One run of a [`Recorder`] job.
#[derive(Debug, Clone)]
pub struct Run {
    /// The request's `x-id`.
    pub id: String,
    /// When the handler was entered.
    pub start: Instant,
    /// When the handler returned.
    pub end: Instant,
}

/// A handler that records each run and answers its id. Requests with `x-hold` wait at the
/// [`Gate`]; requests with `x-panic` panic; the others sleep for the configured time.
#[derive(Debug, Default)]
pub struct Recorder {
    runs: Mutex<Vec<Run>>,
    sleep: Duration,
    gate: Gate,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl Recorder {
    /// A recorder whose ordinary jobs take `sleep`.
    pub fn new(sleep: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            sleep,
            ..Recorder::default()
        })
    }

    /// The gate held jobs wait at.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Every finished run, in the order they finished.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The ids of every finished run, in the order they finished.
    pub fn ids(&self) -> Vec<String> {
        self.runs().into_iter().map(|r| r.id).collect()
    }

    /// The most runs that were ever inside the handler at once.
    pub fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }

    /// Runs inside the handler now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Start measuring [`Recorder::max_active`] afresh (from the runs inside now), for example
    /// between two batches; returns the peak measured so far.
    pub fn reset_max_active(&self) -> usize {
        self.max_active
            .swap(self.active.load(Ordering::SeqCst), Ordering::SeqCst)
    }
}

impl Handler for Recorder {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let start = Instant::now();
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now_active, Ordering::SeqCst);
        let id = req
            .headers
            .get("x-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if req.headers.contains_key("x-hold") {
            self.gate.hold(&id);
        } else if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        if req.headers.contains_key("x-panic") {
            panic!("deliberate panic in job {id}");
        }
        let end = Instant::now();
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Run {
                id: id.clone(),
                start,
                end,
            });
        Ok(text(StatusCode::OK, id))
    }
}

/// A handler that panics when the body is `panic` and answers `fine` otherwise.
#[derive(Debug, Default)]
pub struct Panicker;

impl Handler for Panicker {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        if req.body.as_ref() == b"panic" {
            panic!("deliberate panic: the body said so");
        }
        Ok(text(StatusCode::OK, "fine".to_string()))
    }
}

fn text(status: StatusCode, body: String) -> JobResponse {
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "fiddler_crab-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `contents` to `name` inside it; returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).expect("write a temp file");
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// True if process `pid` no longer runs: it does not exist, or it is a zombie awaiting its reaper.
pub fn is_dead(pid: i32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the first field after the parenthesised command name.
    match stat.rsplit_once(')') {
        Some((_, rest)) => matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
        None => true,
    }
}
