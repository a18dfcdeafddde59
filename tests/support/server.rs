//! A real fiddler_crab server on the test's runtime: started from a config string on port 0
//! ([`TestServer::start`], or [`TestServer::launch`] for more options), looked into, reloaded,
//! shut down, and joined (re-raising a panic from `run`).

use super::client::{Client, Reply};
use super::{wait_until, PATIENCE};
use bytes::Bytes;
use common::counters::CountersSnapshot;
use common::endpoint::{Endpoint, EndpointStatus};
use fiddler_crab::config::Config;
use fiddler_crab::{HandlerRegistry, ReloadSummary, Reloader, Server};
use frontend::readiness::Readiness;
use frontend::{App, Listeners, Tls};
use hyper::StatusCode;
use light::TrafficLight;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// How to start a [`TestServer`] beyond its config: handlers, a fixed traffic light, readiness on
/// a manual clock, an admin listener, TLS, a redirect listener.
/// `TestServer::launch(toml).registry(&r).light(&light).admin().start().await`.
#[must_use]
pub struct Launch {
    toml: String,
    registry: HandlerRegistry,
    light: Option<TrafficLight>,
    readiness: Option<Readiness>,
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

    /// Judge `/readyz` with `readiness`, typically on a [`frontend::readiness::ManualClock`] the
    /// test moves, so a recovery hold passes without waiting for it. Needs [`Launch::light`].
    pub fn readiness(mut self, readiness: Readiness) -> Launch {
        self.readiness = Some(readiness);
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
        let server = match (self.light, self.readiness) {
            (Some(light), Some(readiness)) => {
                Server::build_with(&config, &self.registry, light, readiness)
            }
            (Some(light), None) => Server::build_with_light(&config, &self.registry, light),
            (None, None) => Server::build(&config, &self.registry),
            (None, Some(_)) => panic!("Launch::readiness needs Launch::light too"),
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
            readiness: None,
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

    /// Replace every worker process, one at a time per endpoint (what SIGUSR2 does).
    pub fn restart_workers(&self) -> usize {
        self.reloader.restart_workers()
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

    /// True once `run` has returned (or panicked).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
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

    /// Shut down and wait for `run` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.join().await;
    }
}
