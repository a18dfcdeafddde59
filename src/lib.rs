//! fiddler_crab wires a [`Config`] to running parts: a handler and an executor per endpoint, and
//! the shared front end that serves them.
//!
//! # Layout
//! - [`HandlerRegistry`]: builtin handlers by name (`ping`, `echo`, plus any a test registers).
//! - [`Server`]: built from a validated config; [`Server::run`] serves a bound listener until a
//!   shutdown future resolves.
//! - [`default_config`]: the embedded default config.
//! - [`Reloader`]: applies a new config to a running server (SIGHUP); restarts the worker
//!   processes one at a time (SIGUSR2). Worker pools (`workers::Pools`) outlive a reload that
//!   replaces their endpoint.
//! - `check`: [`check_files`], what a config names on disk exists and can be used.
#![deny(missing_docs)]

use common::builtin::{Echo, Ping};
use common::endpoint::Endpoint;
use common::executor::Executor;
use common::handler::Handler;
use config::{Config, ConfigError, EndpointConfig, HandlerConfig, ModeConfig};
use exec::{ExecHandler, Registry as ChildRegistry};
use frontend::auth::{Guard, Guards};
use frontend::readiness::Readiness;
use frontend::{serve, serve_all, App, Listeners};
use light::{available_parallelism_with_quota, TrafficLight};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use tokio::net::TcpListener;
use upstream::UpstreamHandler;
use workers::{Pools, WorkerHandler};

mod check;

pub use adaptive::AdaptiveExecutor;
pub use check::check_files;
pub use config;

/// The embedded default config, with `"@WORDCOUNT_PY@"` still in it.
pub const DEFAULT_CONFIG_TEMPLATE: &str = include_str!("../config/default.toml");

/// `examples/wordcount.py`, carried inside the binary: the default's `/wordcount` runs it with
/// `python3 -c`, so an installed binary needs no source tree and writes no file.
pub const WORDCOUNT_PY: &str = include_str!("../examples/wordcount.py");

/// The embedded default config, ready to parse (the script in place as a TOML string).
pub fn default_config_text() -> String {
    let script = toml::Value::String(WORDCOUNT_PY.to_string()).to_string();
    DEFAULT_CONFIG_TEMPLATE.replace("\"@WORDCOUNT_PY@\"", &script)
}

/// The embedded default config, validated.
pub fn default_config() -> Result<Config, ConfigError> {
    Config::from_toml(&default_config_text(), "<embedded default>")
}

/// At shutdown, once every job is answered, the worker processes (SIGTERMed when their pool's
/// last job finished) get at least this long to exit before the server process does; the
/// survivors then die with it (`PR_SET_PDEATHSIG`).
const WORKER_STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Builtin handlers by name.
#[derive(Clone)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        let mut registry = HandlerRegistry {
            handlers: HashMap::new(),
        };
        registry.register("ping", Arc::new(Ping));
        registry.register("echo", Arc::new(Echo));
        registry
    }
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("names", &self.names())
            .finish()
    }
}

impl HandlerRegistry {
    /// Make `handler` available as `builtin = "name"`.
    pub fn register(&mut self, name: &str, handler: Arc<dyn Handler>) -> &mut Self {
        self.handlers.insert(name.to_string(), handler);
        self
    }

    fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config names something that does not exist.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A token file cannot be used.
    #[error(transparent)]
    Auth(#[from] frontend::auth::AuthError),
    /// A thread could not be started.
    #[error("cannot start endpoint {path}: {source}")]
    Start {
        /// The endpoint.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Check what validation alone cannot: that every builtin a config names exists.
pub fn check(config: &Config, registry: &HandlerRegistry, file: &str) -> Result<(), ConfigError> {
    for (i, ep) in config.endpoints.iter().enumerate() {
        if let HandlerConfig::Builtin(name) = &ep.handler {
            if registry.get(name).is_none() {
                return Err(ConfigError {
                    file: file.to_string(),
                    key: format!("endpoint[{i}].builtin"),
                    problem: format!(
                        "no builtin handler `{}` (known: {})",
                        config::quote(name),
                        registry.names()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Read the token and users files of every guarded endpoint (and of the server's own paths when
/// `protect_admin`); an auth table shared by several (the server's default) is read once.
pub fn load_guards(config: &Config) -> Result<Guards, frontend::auth::AuthError> {
    let mut by_table: HashMap<&config::AuthConfig, Arc<Guard>> = HashMap::new();
    let mut load = |auth| -> Result<Arc<Guard>, frontend::auth::AuthError> {
        if let Some(guard) = by_table.get(auth) {
            return Ok(guard.clone());
        }
        let guard = Arc::new(Guard::load(auth)?);
        by_table.insert(auth, guard.clone());
        Ok(guard)
    };
    let mut guards = Guards::default();
    for ep in &config.endpoints {
        if let Some(auth) = &ep.auth {
            guards.endpoints.insert(ep.path.clone(), load(auth)?);
        }
    }
    if let (true, Some(auth)) = (config.server.protect_admin, &config.server.auth) {
        guards.admin = Some(load(auth)?);
    }
    Ok(guards)
}

/// The executor for an endpoint's mode; adaptive endpoints read `light`.
pub fn executor_for(
    ep: &EndpointConfig,
    light: &TrafficLight,
) -> std::io::Result<Arc<dyn Executor>> {
    let name = format!("fc-pool{}", ep.path.replace('/', "-"));
    Ok(match ep.mode {
        ModeConfig::Crab { pace } => Arc::new(crab::CrabExecutor::new(pace)),
        ModeConfig::Jellyfish { workers } => Arc::new(jellyfish::JellyfishExecutor::new(
            &name,
            pool_size(workers),
        )?),
        ModeConfig::Adaptive {
            workers,
            yellow_workers,
            pace,
        } => {
            let workers = pool_size(workers);
            let yellow = yellow_workers.map_or((workers / 2).max(1), |y| y.get());
            Arc::new(AdaptiveExecutor::new(
                &name,
                light.clone(),
                workers,
                yellow,
                pace,
            )?)
        }
    })
}

/// A pool's size: `workers` as configured, or the CPUs the process may use (its cgroup's CPU
/// quota included).
pub fn pool_size(workers: Option<NonZeroUsize>) -> usize {
    workers.map_or_else(available_parallelism_with_quota, |w| w.get())
}

/// Start the configured traffic light on the real machine's CPU, memory and pressure.
pub fn start_light(config: &Config) -> std::io::Result<TrafficLight> {
    let l = &config.light;
    TrafficLight::system(l.policy, l.sample_every, l.stale_after, l.fail_safe)
}

/// The worker processes a worker endpoint keeps, or the idle connections an upstream endpoint
/// keeps: one per concurrency slot (crab 1, jellyfish and adaptive their pool size).
pub fn worker_slots(ep: &EndpointConfig) -> usize {
    match ep.mode {
        ModeConfig::Crab { .. } => 1,
        ModeConfig::Jellyfish { workers } | ModeConfig::Adaptive { workers, .. } => {
            pool_size(workers)
        }
    }
}

/// An endpoint just started, and its worker handler if it has one (to activate once it serves).
type Started = (Arc<Endpoint>, Option<Arc<WorkerHandler>>);

/// Start one endpoint: its handler, executor, queue and dispatcher thread.
fn start_endpoint(
    ep: &EndpointConfig,
    registry: &HandlerRegistry,
    children: &Arc<ChildRegistry>,
    pools: &Pools,
    light: &TrafficLight,
    https: bool,
) -> Result<Started, BuildError> {
    let start = |source| BuildError::Start {
        path: ep.path.clone(),
        source,
    };
    let mut workers = None;
    let handler: Arc<dyn Handler> = match &ep.handler {
        HandlerConfig::Builtin(name) => registry.get(name).ok_or_else(|| ConfigError {
            file: "config".to_string(),
            key: format!("endpoint {}: builtin", ep.path),
            problem: format!("no builtin handler `{name}` (known: {})", registry.names()),
        })?,
        HandlerConfig::Exec(exec) => {
            Arc::new(ExecHandler::new(&ep.path, exec.clone(), children.clone()))
        }
        HandlerConfig::Worker(worker) => {
            let handler = pools
                .handler(&ep.path, worker, worker_slots(ep), ep.queue_timeout)
                .map_err(start)?;
            workers = Some(handler.clone());
            handler
        }
        HandlerConfig::Upstream(upstream) => Arc::new(
            UpstreamHandler::start(&ep.path, ep.is_prefix(), upstream, worker_slots(ep), https)
                .map_err(start)?,
        ),
    };
    if ep.batch.max.get() > 1 && !handler.can_batch() {
        // The config allows max_batch only where the handler kind batches; this holds the
        // handler itself to it.
        return Err(ConfigError {
            file: "config".to_string(),
            key: format!("endpoint {}: max_batch", ep.path),
            problem: "this endpoint's handler cannot take a batch in one call".to_string(),
        }
        .into());
    }
    let executor = executor_for(ep, light).map_err(start)?;
    let endpoint = Endpoint::start(ep.clone(), handler, executor).map_err(start)?;
    Ok((endpoint, workers))
}

/// A built server: every endpoint's queue and executor running, ready to serve a listener.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    registry: HandlerRegistry,
    pools: Arc<Pools>,
}

impl Server {
    /// Start the traffic light and every endpoint of `config`.
    pub fn build(config: &Config, registry: &HandlerRegistry) -> Result<Server, BuildError> {
        let light = start_light(config).map_err(|source| BuildError::Start {
            path: "(traffic light)".into(),
            source,
        })?;
        Server::build_with_light(config, registry, light)
    }

    /// Start every endpoint of `config` with a given traffic light (for example a fixed one in
    /// tests, so decisions do not depend on the machine's load).
    pub fn build_with_light(
        config: &Config,
        registry: &HandlerRegistry,
        light: TrafficLight,
    ) -> Result<Server, BuildError> {
        Server::build_with(config, registry, light, Readiness::default())
    }

    /// Start every endpoint of `config` with a given traffic light, judging `/readyz` with
    /// `readiness` (for example on a test's manual clock, so its hold passes without waiting).
    pub fn build_with(
        config: &Config,
        registry: &HandlerRegistry,
        light: TrafficLight,
        readiness: Readiness,
    ) -> Result<Server, BuildError> {
        check(config, registry, "config")?;
        let guards = load_guards(config)?;
        // Descendants that escape their job's process group come back to us to be killed.
        if let Err(e) = children::become_subreaper() {
            tracing::warn!(cause = %e, "not a child subreaper: a process that leaves its job's process group can outlive the job");
        }
        let children = Arc::new(ChildRegistry::new());
        let pools = Arc::new(Pools::new(children.clone(), light.clone()));
        // Endpoints are served on the main listener only, which speaks HTTPS whenever TLS is on.
        let https = config.server.tls.is_some();
        let endpoints = config
            .endpoints
            .iter()
            .map(|ep| {
                start_endpoint(ep, registry, &children, &pools, &light, https).map(|(e, _)| e)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Server {
            app: Arc::new(
                App::new(config.server.clone(), endpoints, children, light)
                    .with_readiness(readiness)
                    .with_guards(&guards),
            ),
            registry: registry.clone(),
            pools,
        })
    }

    /// The running app (endpoints, counters).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// A handle that applies a new config to the running server.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            app: self.app.clone(),
            registry: self.registry.clone(),
            pools: self.pools.clone(),
        }
    }

    /// Serve `listener` until `shutdown` resolves, then drain (see [`frontend::serve`]) and
    /// stop the worker processes.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let grace = self.app.server.shutdown_grace;
        serve(listener, self.app, shutdown).await;
        self.pools.wait_stopped(grace.max(WORKER_STOP_BOUND)).await;
    }

    /// Serve several listeners (main, admin) until `shutdown` resolves, then drain and stop the
    /// worker processes.
    pub async fn run_all(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let grace = self.app.server.shutdown_grace;
        serve_all(listeners, self.app, shutdown).await;
        self.pools.wait_stopped(grace.max(WORKER_STOP_BOUND)).await;
    }
}

/// Applies a new config to a running server (SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader {
    app: Arc<App>,
    registry: HandlerRegistry,
    pools: Arc<Pools>,
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Endpoints whose config is unchanged: they keep their queue and jobs as they are.
    pub kept: usize,
    /// Endpoints started fresh (new, or changed).
    pub started: usize,
    /// Old endpoints (changed or removed) now draining: they run what they admitted, then stop.
    pub retired: usize,
    /// `[server]` differs from the running one: those settings need a restart.
    pub server_changed: bool,
}

impl Reloader {
    /// Replace every worker process of every worker endpoint, one at a time per endpoint, each
    /// only once its successor is ready (SIGUSR2). Returns how many endpoints' pools.
    pub fn restart_workers(&self) -> usize {
        self.pools.restart_all("restart requested")
    }

    /// Apply a validated config's endpoints. Unchanged endpoints keep running untouched (but
    /// read the files their handler names again, [`common::handler::Handler::reload_files`]); changed
    /// and new ones get fresh queues; the old ones finish every job they admitted. Nothing
    /// admitted is lost. On error nothing changes. A changed worker endpoint keeps its worker
    /// pool; if the workers' own settings changed, they are replaced one at a time (a rolling
    /// restart), never all at once.
    pub fn apply(&self, config: &Config) -> Result<ReloadSummary, BuildError> {
        check(config, &self.registry, "config")?;
        // Token files are read again on every reload, whether or not their endpoint changed.
        let guards = load_guards(config)?;
        let mut kept = 0;
        let mut started: Vec<Arc<Endpoint>> = Vec::new();
        let mut worker_handlers = Vec::new();
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            match self.app.endpoint(&ep.path) {
                Some(current) if current.config == *ep => {
                    kept += 1;
                    // Renewed certificates are taken by an unchanged endpoint too. The files were
                    // checked before (`check_files`); one that went bad since keeps the old.
                    if let Err(e) = current.reload_handler_files() {
                        tracing::warn!(endpoint = %ep.path, cause = %e, "files not read again; the endpoint keeps the ones it had");
                    }
                    endpoints.push(current);
                }
                _ => {
                    let fresh = match start_endpoint(
                        ep,
                        &self.registry,
                        self.app.children(),
                        &self.pools,
                        self.app.light(),
                        self.app.server.tls.is_some(),
                    ) {
                        Ok((fresh, workers)) => {
                            worker_handlers.extend(workers);
                            fresh
                        }
                        Err(e) => {
                            // Nothing is swapped in: stop what this attempt started.
                            for s in &started {
                                s.retire();
                            }
                            return Err(e);
                        }
                    };
                    started.push(fresh.clone());
                    endpoints.push(fresh);
                }
            }
        }
        let retired = self.app.swap_endpoints(endpoints, &guards);
        for handler in worker_handlers {
            handler.activate();
        }
        Ok(ReloadSummary {
            kept,
            started: started.len(),
            retired,
            server_changed: self.app.server != config.server,
        })
    }
}
