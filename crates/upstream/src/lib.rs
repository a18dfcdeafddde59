//! Upstream endpoints: each admitted request is forwarded to an HTTP/1.1 server that runs by
//! itself (llama.cpp's `llama-server`, a gunicorn or uvicorn app), over a kept-alive connection
//! pool on TCP, TLS over TCP (`https://`, [`tls`]) or a Unix socket, and its answer relayed back.
//!
//! The endpoint's queue and concurrency stay in front: at most the endpoint's running slots
//! (`workers` in jellyfish) are in flight to the upstream, the rest wait in the bounded queue or
//! overflow. What this crate adds:
//!
//! - **The exchange** ([`exchange`]): hop-by-hop headers removed, `X-Forwarded-For` appended and
//!   `X-Forwarded-Proto` set, the client's `Host` passed on (or the server's own name, with
//!   `host_header = "upstream"`); the upstream's status, headers and
//!   body back: a small body whole, any other streamed chunk by chunk as it comes (Server-Sent
//!   Events, token streams), still in the job's running slot. The whole exchange, a stream's last
//!   chunk included, is bounded by `timeout_ms`, the connect by `connect_timeout_ms`.
//! - **One safe retry**: a request is sent again (once) only if it was never written: the
//!   connection could not be made, or closed before the request went out. A kept-alive
//!   connection idle past `keepalive_timeout_ms` is not used at all (the upstream may be closing
//!   it as the request would be written), so that case stays rare.
//! - **Fast, clean failures**: a refused connection is `502 upstream unavailable` at once (the
//!   address and cause go to the log and `/status`, never to the client).
//! - **WebSocket sessions** (`upgrade`): an HTTP/1.1 upgrade the upstream answers `101` is spliced
//!   through, in the job's running slot, until either side closes or it is silent past
//!   `websocket_idle_timeout_ms`.
//! - **Several servers** (`urls`): each request goes to the usable server with the fewest
//!   requests in flight (`Shared::pick`), equals taking turns; a refused connection sends the
//!   request's one resend to another server and passes the refusing one over for a while.
//! - **Health** ([`health`]): with `health_path`, a poll per server; an unhealthy server gets no
//!   requests while another is usable, and while every server is unhealthy new requests are
//!   overflow at once and `/readyz` says why.
//!
//! # Layout
//! - [`UpstreamHandler`]: the [`Handler`] an endpoint calls; `Shared` and `Server`: what it shares
//!   with its exchanges and polls, and each server's pool, health and numbers.
//! - `io`: the I/O thread and its runtime, which the exchanges and the health poll run on.
//! - [`exchange`]: one request's exchange, the target path, the streamed body, and its failures
//!   as answers.
//! - `deadline`: the exchanges' deadlines, kept by one task instead of a timer per exchange.
//! - [`health`]: the health state and its poll, per server.
//! - `status`: `/status` and `/metrics`.
//! - `upgrade`: a WebSocket session passed through (`101`), spliced in the job's running slot.
//! - [`tls`]: the client settings for `https://` servers (trusted roots, ALPN) and their names.
#![deny(missing_docs)]

mod deadline;
pub mod exchange;
pub mod health;
mod io;
mod status;
pub mod tls;
mod upgrade;

use common::handler::{AsyncCall, Handler, HandlerError, HandlerSample, JobRequest, JobResponse};
use config::{UpstreamAddress, UpstreamConfig, UpstreamServer, UpstreamTls};
use health::Health;
use hyper::header::HeaderValue;
use relay::{Forwarding, Target};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the handler, its exchanges and its health polls share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The endpoint's path, for logs.
    pub endpoint: String,
    pub config: UpstreamConfig,
    pub forwarding: Forwarding,
    /// The prefix taken off the path before it is forwarded (`strip_prefix`), without its `/`.
    pub strip: Option<String>,
    /// The most kept-alive connections each server keeps idle (the endpoint's concurrency).
    pub max_idle: usize,
    /// Where each affinity key's last request went (empty without `affinity_header`).
    pub sticky: Sticky,
    /// The servers (`url`, or each of `urls`), in the order written.
    pub servers: Box<[Server]>,
    /// How many servers are unhealthy by their last health check: the endpoint admits while
    /// fewer than all are (kept by `Health::record`).
    pub unhealthy: AtomicUsize,
    /// Where the next pick starts looking, so that servers equally loaded take turns (in
    /// proportion to their weights: a turn counts modulo `total_weight`).
    pub turn: AtomicUsize,
    /// The servers' weights added up (their number when `weights` is not given: then a turn is
    /// found by place, not by weight).
    pub total_weight: usize,
    /// The time `Server::down_until` counts from.
    pub epoch: Instant,
    /// The deadlines of the exchanges in flight, kept by one task on the I/O runtime.
    pub deadlines: Arc<deadline::Deadlines>,
}

/// One upstream server: where it is, its idle connections, its health and its numbers.
#[derive(Debug)]
pub(crate) struct Server {
    /// As written, for logs and `/status`.
    pub url: String,
    pub target: Target,
    /// The server's own name: `tls_server_name` if given, else its URL's authority (without a
    /// default port). The `Host` of its health checks, and of every request with
    /// `host_header = "upstream"`.
    pub authority: HeaderValue,
    /// Kept-alive connections not in use, by the runtime that drives them; at most `max_idle`.
    pub idle: Mutex<exchange::Idle>,
    pub health: Health,
    pub stats: status::Stats,
    /// The last failure, for `/status`: what, and when.
    pub last_error: Mutex<Option<(String, Instant)>>,
    pub in_flight: AtomicU64,
    /// Its weight (`weights[N]`, else 1): picked by fewest in flight for its weight.
    pub weight: u64,
    /// Its share of the endpoint's slots, by weight (rounded up): past it, an affinity key's
    /// request is placed by load instead.
    pub share: u64,
    /// After a failed connection, the server is passed over (while another is usable) until
    /// this many nanoseconds after `Shared::epoch`; 0: not passed over.
    pub down_until: AtomicU64,
}

impl Server {
    /// The server `config` names; `tls`: the endpoint's TLS settings and client config, if a
    /// server is `https://`. An error (a host no certificate can be checked against) says why.
    fn new(
        config: &UpstreamServer,
        checked: bool,
        tls: Option<&(UpstreamTls, Arc<rustls::ClientConfig>)>,
        share: u64,
    ) -> Result<Server, String> {
        let (target, authority) = match &config.address {
            UpstreamAddress::Tcp {
                host,
                port,
                tls: https,
            } => {
                let with_port = *port != if *https { 443 } else { 80 };
                let name = match (host.contains(':'), with_port) {
                    (true, true) => format!("[{host}]:{port}"),
                    (true, false) => format!("[{host}]"),
                    (false, true) => format!("{host}:{port}"),
                    (false, false) => host.clone(),
                };
                let (to, name) = match tls.filter(|_| *https) {
                    // The name the server answers to: its certificate's name if one is given.
                    Some((settings, client)) => (
                        Some(relay::TlsTo::new(
                            client.clone(),
                            tls::server_name(settings, host)?,
                        )),
                        settings.server_name.clone().unwrap_or(name),
                    ),
                    None => (None, name),
                };
                (
                    Target::Tcp {
                        host: host.clone(),
                        port: *port,
                        tls: to,
                    },
                    HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("localhost")),
                )
            }
            UpstreamAddress::Unix(socket) => (
                Target::Unix(socket.clone()),
                HeaderValue::from_static("localhost"),
            ),
        };
        Ok(Server {
            url: config.url.clone(),
            target,
            authority,
            idle: Mutex::new(exchange::Idle::default()),
            health: Health::new(checked),
            stats: status::Stats::default(),
            last_error: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            weight: u64::from(config.weight.max(1)),
            share,
            down_until: AtomicU64::new(0),
        })
    }
}

impl Shared {
    /// The server the next request goes to: of those not unhealthy and not passed over after a
    /// failed connection, the one with the fewest requests in flight for its weight, equals
    /// taking turns (each as many turns in a round as its weight); if none is usable, the least
    /// loaded of all. With an `affinity` key (the hash of the request's `affinity_header`): the
    /// server the key's last request went to, while it is usable and has less than its `share`
    /// of the endpoint's slots in flight; else as without a key, and the
    /// key remembered there. `avoid` (a server that just failed to connect) is never picked while
    /// there is another. One server: always it, without a look.
    pub(crate) fn pick(&self, avoid: Option<usize>, affinity: Option<u64>) -> usize {
        let n = self.servers.len();
        if n == 1 {
            return 0;
        }
        let now = self.now();
        let usable = |server: &Server| {
            server.health.available() && server.down_until.load(Ordering::Relaxed) <= now
        };
        if let Some(key) = affinity {
            if let Some(home) = self.sticky.get(key) {
                let server = &self.servers[home];
                if avoid != Some(home)
                    && usable(server)
                    && server.in_flight.load(Ordering::Relaxed) < server.share
                {
                    return home;
                }
            }
        }
        let start = self.start();
        // Usable first, then the fewest in flight for its weight (a / wa < b / wb, compared as
        // a * wb < b * wa); the first met of equals, from `start`, wins.
        let mut best: Option<(usize, bool, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if avoid == Some(i) {
                continue;
            }
            let server = &self.servers[i];
            let (unusable, load) = (!usable(server), server.in_flight.load(Ordering::Relaxed));
            let better = match best {
                None => true,
                Some((_, b_unusable, b_load, b_weight)) => {
                    (unusable, load * b_weight) < (b_unusable, b_load * server.weight)
                }
            };
            if better {
                best = Some((i, unusable, load, server.weight));
            }
        }
        let picked = best.map_or(0, |(i, ..)| i);
        if let Some(key) = affinity {
            self.sticky.set(key, picked);
        }
        picked
    }

    /// Where the next pick starts looking: turn by turn, each server as many turns in a round as
    /// its weight.
    fn start(&self) -> usize {
        let n = self.servers.len();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        if self.total_weight == n {
            return turn % n;
        }
        let mut left = (turn % self.total_weight) as u64;
        for (i, server) in self.servers.iter().enumerate() {
            if left < server.weight {
                return i;
            }
            left -= server.weight;
        }
        0
    }

    /// The affinity key of a request with these headers: the hash of its `affinity_header`'s
    /// value, if the endpoint has one and the request carries it.
    pub(crate) fn affinity(&self, headers: &hyper::HeaderMap) -> Option<u64> {
        let name = self.config.affinity_header.as_ref()?;
        let value = headers.get(name)?;
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(value.as_bytes(), &mut hasher);
        Some(std::hash::Hasher::finish(&hasher))
    }

    /// Nanoseconds since `epoch` (at least 1, so that 0 can mean "never").
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Pass `server` over for `health_interval_ms` (with several servers): it refused a
    /// connection or did not accept one in time (`cause`). Logged when it was not passed over
    /// already: once per spell, not once per request that finds it so.
    pub(crate) fn pass_over(&self, server: usize, cause: &str) {
        if self.servers.len() < 2 {
            return;
        }
        let now = self.now();
        let until = now.saturating_add(
            u64::try_from(self.config.health_interval.as_nanos()).unwrap_or(u64::MAX),
        );
        let at = &self.servers[server];
        if at.down_until.swap(until, Ordering::Relaxed) <= now {
            tracing::warn!(
                endpoint = %self.endpoint,
                upstream = %at.url,
                cause,
                "upstream server passed over for health_interval_ms: its requests go to the others"
            );
        }
    }

    /// How long `server` is still passed over, if it is.
    pub(crate) fn passed_over_for(&self, server: &Server) -> std::time::Duration {
        let until = server.down_until.load(Ordering::Relaxed);
        std::time::Duration::from_nanos(until.saturating_sub(self.now()))
    }
}

/// Where each affinity key's last request went: a table of [`STICKY_ENTRIES`] slots, each the
/// key's upper bits and the server's place in the list plus one (0: empty), indexed by the key's
/// lower bits. Bounded and lock-free: a key whose slot another key took since is simply placed
/// again, by load, as a new one is.
#[derive(Debug)]
pub(crate) struct Sticky {
    slots: Box<[AtomicU64]>,
}

/// Slots of a [`Sticky`] table (a power of two): 512 KiB per endpoint with `affinity_header`.
const STICKY_ENTRIES: usize = 1 << 16;

impl Sticky {
    fn new(used: bool) -> Sticky {
        let len = if used { STICKY_ENTRIES } else { 0 };
        Sticky {
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The slot of `key` and the tag it is stored under: the key's upper bits, its low byte
    /// left for the server.
    fn place(&self, key: u64) -> Option<(&AtomicU64, u64)> {
        let slot = self
            .slots
            .get(key as usize & (self.slots.len().checked_sub(1)?))?;
        Some((slot, key & !0xff))
    }

    /// The server `key`'s last request went to, if the table still holds it.
    fn get(&self, key: u64) -> Option<usize> {
        let (slot, tag) = self.place(key)?;
        let entry = slot.load(Ordering::Relaxed);
        (entry & !0xff == tag && entry & 0xff != 0).then(|| (entry & 0xff) as usize - 1)
    }

    /// Remember that `key`'s request went to `server` (below `config::upstream::MAX_SERVERS`).
    fn set(&self, key: u64, server: usize) {
        if let Some((slot, tag)) = self.place(key) {
            slot.store(tag | ((server as u64 + 1) & 0xff), Ordering::Relaxed);
        }
    }
}

/// Forwards an endpoint's requests to its upstream. See the [crate docs](crate).
///
/// `handle` blocks its (executor) thread on the handler's own I/O runtime; it is never inline.
/// `call_async` runs the same exchange on the front end's own task (see
/// [`Handler::call_async`]): every request but a WebSocket upgrade, at once or after its turn in
/// the endpoint's line; `handle` serves the executor path (upgrades, `on_client_gone =
/// "finish"`, crab mode, adaptive on red).
#[derive(Debug)]
pub struct UpstreamHandler {
    shared: Arc<Shared>,
    io: io::Io,
}

impl UpstreamHandler {
    /// A handler for the endpoint at `path` forwarding to `config`'s servers, each keeping at most
    /// `slots` idle connections (the endpoint's concurrency), and telling the upstream the
    /// client's scheme was HTTPS when `https`. Starts its I/O thread (and health polls, one per server).
    pub fn start(
        path: &str,
        prefix: bool,
        config: &UpstreamConfig,
        slots: usize,
        https: bool,
    ) -> std::io::Result<UpstreamHandler> {
        let checked = config.health_path.is_some();
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let tls = match &config.tls {
            Some(settings) => {
                let client = tls::client_config(settings)
                    .map_err(|(key, e)| invalid(format!("upstream.{key}: {e}")))?;
                Some((settings.clone(), client))
            }
            None => None,
        };
        let total_weight: usize = config
            .servers
            .iter()
            .map(|s| s.weight.max(1) as usize)
            .sum();
        let slots = slots.max(1);
        let servers = config
            .servers
            .iter()
            .map(|server| {
                // Its share of the slots by weight, rounded up (at least one).
                let share = (slots * server.weight.max(1) as usize).div_ceil(total_weight.max(1));
                Server::new(server, checked, tls.as_ref(), share.max(1) as u64)
                    .map_err(|e| invalid(format!("upstream.{}: {e}", server.key)))
            })
            .collect::<std::io::Result<Box<[Server]>>>()?;
        let shared = Arc::new(Shared {
            endpoint: path.to_string(),
            config: config.clone(),
            forwarding: Forwarding {
                proto: Some(if https { "https" } else { "http" }),
            },
            strip: (prefix && config.strip_prefix).then(|| path.trim_end_matches('/').to_string()),
            max_idle: slots,
            sticky: Sticky::new(config.affinity_header.is_some()),
            servers,
            unhealthy: AtomicUsize::new(0),
            turn: AtomicUsize::new(0),
            total_weight: total_weight.max(1),
            epoch: Instant::now(),
            deadlines: Arc::default(),
        });
        let io = io::Io::start(shared.clone())?;
        Ok(UpstreamHandler { shared, io })
    }
}

impl Handler for UpstreamHandler {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        exchange::run(&self.shared, self.io.runtime(), req)
    }

    fn runs_async(&self) -> bool {
        true
    }

    fn call_async(&self, req: JobRequest) -> AsyncCall {
        if req.upgrade.is_pending() {
            // A WebSocket session's splice runs through the executor path, as documented.
            return AsyncCall::Declined(req);
        }
        AsyncCall::Started(Box::pin(exchange::run_async(self.shared.clone(), req)))
    }

    fn available(&self) -> bool {
        // One atomic load on every admission, however many servers.
        self.shared.unhealthy.load(Ordering::Acquire) < self.shared.servers.len()
    }

    /// The trusted roots and the client certificate read again, for new connections; open ones
    /// keep theirs. Nothing without `https://` servers.
    fn reload_files(&self) -> Result<(), String> {
        let Some(settings) = &self.shared.config.tls else {
            return Ok(());
        };
        let client =
            tls::client_config(settings).map_err(|(key, e)| format!("upstream.{key}: {e}"))?;
        for server in self.shared.servers.iter() {
            if let Target::Tcp { tls: Some(to), .. } = &server.target {
                to.set_config(client.clone());
            }
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        health::ready(&self.shared.servers)
    }

    fn status(&self) -> Option<serde_json::Value> {
        Some(status::status(&self.shared))
    }

    fn samples(&self) -> Vec<HandlerSample> {
        status::samples(&self.shared)
    }

    fn close(&self) {
        self.io.stop();
    }
}

impl Drop for UpstreamHandler {
    fn drop(&mut self) {
        self.io.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_table_remembers_each_key_until_another_takes_its_entry() {
        let table = Sticky::new(true);
        let key = 0x1234_5678_9abc_0042_u64;
        assert_eq!(table.get(key), None);
        table.set(key, 0);
        assert_eq!(table.get(key), Some(0));
        table.set(key, 63);
        assert_eq!(table.get(key), Some(63));
        // Another key in the same entry (same low 16 bits): it takes the entry, and the first
        // key is forgotten, not mistaken for the other's.
        let other = key ^ (1 << 40);
        assert_eq!(table.get(other), None);
        table.set(other, 1);
        assert_eq!(table.get(other), Some(1));
        assert_eq!(table.get(key), None);
        // Without affinity_header: no table, nothing remembered, nothing allocated.
        let none = Sticky::new(false);
        none.set(key, 1);
        assert_eq!(none.get(key), None);
        assert!(none.slots.is_empty());
    }
}
