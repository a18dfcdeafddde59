//! The app: what the front end serves, as a routing table that a config reload can swap.

use crate::auth::{Guard, Guards};
use crate::readiness::{Load, Readiness, Verdict};
use children::Registry;
use common::endpoint::Endpoint;
use config::ServerConfig;
use hyper::header::HeaderValue;
use light::{Light, TrafficLight};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// The readiness reason while some endpoint's handler cannot serve yet (see
/// [`App::unready_handlers`] for which and why).
pub const HANDLER_NOT_READY: &str = "handler-not-ready";

/// Tables with more endpoints than this are searched by hash; smaller ones by a linear scan,
/// which for a handful of short paths is faster than hashing the path.
const LINEAR_ROUTES: usize = 8;

/// Each table's identity, unique in the process (see [`App::with_table`]).
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// The endpoints by path, with each one's precomputed `Allow` header. Immutable once built.
#[derive(Debug)]
pub(super) struct Table {
    id: u64,
    /// In config order.
    routes: Vec<Route>,
    by_path: HashMap<String, usize>,
    /// The prefix endpoints (an upstream endpoint whose path ends in `/`), longest path first.
    prefixes: Vec<usize>,
    /// The credentials the server's own paths ask for, if protected.
    pub admin_guard: Option<Arc<Guard>>,
}

/// An endpoint and its `Allow` header (for a `405`).
#[derive(Debug)]
pub(super) struct Route {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its methods, as an `Allow` header value.
    pub allow: HeaderValue,
    /// The credentials it asks for, if any.
    pub guard: Option<Arc<Guard>>,
}

impl Table {
    fn new(endpoints: Vec<Arc<Endpoint>>, guards: &Guards) -> Table {
        let routes: Vec<Route> = endpoints
            .into_iter()
            .map(|endpoint| {
                let list: Vec<&str> = endpoint.config.methods.iter().map(|m| m.as_str()).collect();
                let allow = HeaderValue::from_str(&list.join(", "))
                    .unwrap_or_else(|_| HeaderValue::from_static("GET"));
                let guard = guards.endpoints.get(&endpoint.config.path).cloned();
                Route {
                    endpoint,
                    allow,
                    guard,
                }
            })
            .collect();
        let by_path = if routes.len() > LINEAR_ROUTES {
            routes
                .iter()
                .enumerate()
                .map(|(i, r)| (r.endpoint.config.path.clone(), i))
                .collect()
        } else {
            HashMap::new()
        };
        let mut prefixes: Vec<usize> = (0..routes.len())
            .filter(|&i| routes.get(i).is_some_and(|r| r.endpoint.config.is_prefix()))
            .collect();
        prefixes.sort_by_key(|&i| {
            std::cmp::Reverse(routes.get(i).map_or(0, |r| r.endpoint.config.path.len()))
        });
        Table {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            routes,
            by_path,
            prefixes,
            admin_guard: guards.admin.clone(),
        }
    }

    /// Every route, in config order.
    pub(super) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route of `path`, if any: the endpoint with exactly that path, else the prefix
    /// endpoint with the longest path `path` starts with.
    pub(super) fn find(&self, path: &str) -> Option<&Route> {
        let exact = if self.routes.len() > LINEAR_ROUTES {
            self.by_path.get(path).and_then(|&i| self.routes.get(i))
        } else {
            self.routes.iter().find(|r| r.endpoint.config.path == path)
        };
        exact.or_else(|| {
            self.prefixes
                .iter()
                .filter_map(|&i| self.routes.get(i))
                .find(|r| path.starts_with(r.endpoint.config.path.as_str()))
        })
    }
}

thread_local! {
    /// This thread's copy of the routing table it used last (see [`App::with_table`]).
    static CACHED_TABLE: RefCell<Option<Arc<Table>>> = const { RefCell::new(None) };
}

/// Everything the front end serves.
#[derive(Debug)]
pub struct App {
    /// Server-wide settings (fixed for the life of the process; a reload changes endpoints).
    pub server: ServerConfig,
    table: RwLock<Arc<Table>>,
    /// The id of the table in `table` (read without the lock).
    table_id: AtomicU64,
    /// Endpoints a reload replaced or removed, still running the jobs they had admitted.
    retired: Mutex<Vec<Arc<Endpoint>>>,
    started: Instant,
    open_connections: AtomicUsize,
    readiness: Readiness,
    children: Arc<Registry>,
    light: TrafficLight,
    /// Requests refused `401` (before admission).
    unauthorized: AtomicU64,
    /// The public listener's door (see [`crate::door`]).
    door: crate::door::Door,
    /// The hold of overflowed HTTP/1 connections (see [`crate::hold`]).
    hold: crate::hold::Hold,
    /// Response bytes waiting for their clients, and their budget (see [`crate::unsent`]).
    unsent: Arc<crate::unsent::Ledger>,
}

impl App {
    /// An app serving `endpoints`, which must have distinct paths (the config guarantees it),
    /// whose exec handlers register their children in `children`.
    pub fn new(
        server: ServerConfig,
        endpoints: Vec<Arc<Endpoint>>,
        children: Arc<Registry>,
        light: TrafficLight,
    ) -> App {
        let table = Table::new(endpoints, &Guards::default());
        let unsent = Arc::new(crate::unsent::Ledger::new(
            server.max_unsent_bytes,
            server.max_unsent_bytes_per_connection,
        ));
        App {
            unsent,
            server,
            table_id: AtomicU64::new(table.id),
            table: RwLock::new(Arc::new(table)),
            retired: Mutex::new(Vec::new()),
            started: Instant::now(),
            open_connections: AtomicUsize::new(0),
            readiness: Readiness::default(),
            children,
            light,
            unauthorized: AtomicU64::new(0),
            door: crate::door::Door::default(),
            hold: crate::hold::Hold::default(),
        }
    }

    /// Ask for the credentials of `guards` (set before serving; a reload passes its own).
    pub fn with_guards(self, guards: &Guards) -> App {
        let table = Table::new(self.endpoints(), guards);
        self.table_id.store(table.id, Ordering::Release);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self
    }

    /// Response bytes made and not yet taken by their connections, server-wide.
    pub fn unsent_bytes(&self) -> u64 {
        self.unsent.bytes()
    }

    /// Requests and answers refused `503` because their connection's unsent answers were over a
    /// budget.
    pub fn unsent_refused(&self) -> u64 {
        self.unsent.refused()
    }

    pub(super) fn unsent(&self) -> &Arc<crate::unsent::Ledger> {
        &self.unsent
    }

    /// Requests refused `401` so far.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    pub(super) fn count_unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// The public listener's door (see [`crate::door`]).
    pub fn door(&self) -> &crate::door::Door {
        &self.door
    }

    /// The hold of overflowed HTTP/1 connections (see [`crate::hold`]).
    pub fn hold(&self) -> &crate::hold::Hold {
        &self.hold
    }

    /// Judge readiness with `readiness` (its policy and clock) instead of the default.
    pub fn with_readiness(mut self, readiness: Readiness) -> App {
        self.readiness = readiness;
        self
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Call `f` with the routing table now. The hot path of every request: a thread keeps the
    /// table it used last and checks, with one atomic load, that it is still the current one; so
    /// a lookup takes no lock and touches no shared reference count (a reload, which swaps the
    /// table, costs each thread one locked read afterwards).
    pub(super) fn with_table<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        let id = self.table_id.load(Ordering::Acquire);
        CACHED_TABLE.with(|cached| match cached.try_borrow_mut() {
            Ok(mut cached) => {
                let table = match cached.as_ref() {
                    Some(table) if table.id == id => table,
                    _ => cached.insert(self.table()),
                };
                f(table)
            }
            // Re-entered from inside `f` (nothing does): skip the cache.
            Err(_) => f(&self.table()),
        })
    }

    /// The endpoints being served, in config order.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.table()
            .routes
            .iter()
            .map(|r| r.endpoint.clone())
            .collect()
    }

    /// The endpoint serving `path` now, if any (the endpoint with that exact path, else the
    /// longest prefix endpoint above it).
    pub fn endpoint(&self, path: &str) -> Option<Arc<Endpoint>> {
        self.table().find(path).map(|r| r.endpoint.clone())
    }

    /// The endpoint now serving a request with this method, target and headers and a body of
    /// `body_len` bytes (`None`: left in the connection), if it would take it: where a request
    /// whose endpoint a reload retired after routing it goes instead. If it would not, the answer
    /// the request gets, as the router and admission would give it had it come now: `404` (no
    /// endpoint at the path any more), `401` (its credentials), `405` (its methods), `413` (its
    /// body limit); `503` if that endpoint is closed too (shutdown) or cannot take a body left in
    /// the connection (boxed: rare, and it keeps the `Ok` a pointer).
    pub(super) fn successor(
        &self,
        method: &hyper::Method,
        uri: &hyper::Uri,
        headers: &hyper::HeaderMap,
        body_len: Option<usize>,
    ) -> Result<Arc<Endpoint>, Box<hyper::Response<super::Body>>> {
        self.with_table(|table| {
            let Some(route) = table.find(uri.path()) else {
                return Err(Box::new(super::router::not_here()));
            };
            if let Some(refused) = super::router::refusal(self, route, method, headers) {
                return Err(Box::new(refused));
            }
            let ep = &route.endpoint;
            match body_len {
                Some(len) if len as u64 > ep.config.max_body_bytes => {
                    return Err(Box::new(common::handler::BodyFailure::TooLarge.response()));
                }
                None if !super::admission::streams_request_body(ep) => {
                    return Err(Box::new(super::admission::shutting_down()));
                }
                _ if ep.admission().is_closed() => {
                    return Err(Box::new(super::admission::shutting_down()));
                }
                _ => {}
            }
            Ok(ep.clone())
        })
    }

    /// Serve `endpoints`, asking for the credentials of `guards`, from now on. Endpoints of the
    /// old table that are not in the new one (by identity) are retired: they admit nothing new,
    /// run every job they had admitted, then stop. Returns how many were retired.
    pub fn swap_endpoints(&self, endpoints: Vec<Arc<Endpoint>>, guards: &Guards) -> usize {
        let new = Arc::new(Table::new(endpoints, guards));
        let old = {
            let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
            self.table_id.store(new.id, Ordering::Release);
            std::mem::replace(&mut *table, new.clone())
        };
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|e| !e.is_stopped());
        let mut count = 0;
        for ep in old.routes.iter().map(|r| &r.endpoint) {
            if !new.routes.iter().any(|n| Arc::ptr_eq(&n.endpoint, ep)) {
                ep.retire();
                retired.push(ep.clone());
                count += 1;
            }
        }
        count
    }

    /// Retired endpoints still draining.
    pub fn draining(&self) -> usize {
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.iter().filter(|e| !e.is_stopped()).count()
    }

    /// The readiness verdict now (see [`crate::readiness`]).
    pub fn readiness(&self) -> Verdict {
        let endpoints = self.endpoints();
        let min_fill = endpoints
            .iter()
            .map(|e| {
                let admission = e.admission();
                admission.queue_depth() as f64 / admission.queue_capacity().max(1) as f64
            })
            .fold(f64::INFINITY, f64::min);
        let load = Load {
            red: self.light.current() == Light::Red,
            min_fill: if min_fill.is_finite() { min_fill } else { 0.0 },
            closing: endpoints.iter().any(|e| e.admission().is_closed()),
        };
        // An endpoint whose handler cannot serve yet (no worker process ready) is a plain gate,
        // outside the saturation hysteresis.
        if !load.closing && endpoints.iter().any(|e| e.handler_ready().is_err()) {
            return Verdict {
                ready: false,
                reason: HANDLER_NOT_READY,
            };
        }
        self.readiness.check_now(load)
    }

    /// Why each endpoint whose handler cannot serve yet is not ready: `PATH: reason`.
    pub fn unready_handlers(&self) -> Vec<String> {
        self.endpoints()
            .iter()
            .filter_map(|e| {
                let reason = e.handler_ready().err()?;
                Some(format!("{}: {reason}", e.config.path))
            })
            .collect()
    }

    /// The server's live child process groups.
    pub fn children(&self) -> &Arc<Registry> {
        &self.children
    }

    /// Time since the app was built.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub(super) fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The server's traffic light.
    pub fn light(&self) -> &TrafficLight {
        &self.light
    }

    /// The traffic light as a number: 0 green, 1 yellow, 2 red.
    pub fn light_level(&self) -> i64 {
        match self.light.current() {
            Light::Green => 0,
            Light::Yellow => 1,
            Light::Red => 2,
        }
    }

    /// The traffic light's name.
    pub fn light_name(&self) -> &'static str {
        self.light.current().as_str()
    }

    /// The mode of the endpoint at `path`, or `-` for the server's own paths and unknown ones.
    pub fn mode_of(&self, path: &str) -> &'static str {
        self.with_table(|t| t.find(path).map_or("-", |r| r.endpoint.mode().as_str()))
    }

    fn all_endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut all = self.endpoints();
        all.extend(
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        all
    }

    /// Shutdown: stop admitting on every endpoint, retired ones included; queued jobs are shed.
    pub fn close(&self) {
        for ep in self.all_endpoints() {
            ep.close();
        }
    }

    /// True once shutdown has begun ([`App::close`]). An endpoint a reload retired is closed too,
    /// but is not shutdown: it is not counted.
    pub(super) fn closing(&self) -> bool {
        self.all_endpoints().iter().any(|e| {
            let admission = e.admission();
            admission.is_closed() && !admission.is_retired()
        })
    }

    /// True once every endpoint's dispatcher, retired ones included, has drained and stopped.
    pub fn stopped(&self) -> bool {
        self.all_endpoints().iter().all(|e| e.is_stopped())
    }

    /// Resolves once every endpoint's dispatcher, retired ones included, has drained and
    /// stopped: each is awaited in turn, and the set is looked at again in case a reload retired
    /// more meanwhile.
    pub async fn all_stopped(&self) {
        while !self.stopped() {
            for endpoint in self.all_endpoints() {
                endpoint.stopped().await;
            }
        }
    }
}
