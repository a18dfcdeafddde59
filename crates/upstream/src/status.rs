//! An upstream endpoint's line in `/status` and its numbers in `/metrics`.

use crate::{Server, Shared};
use common::handler::HandlerSample;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters of the exchanges with one server, since the handler started.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Requests forwarded.
    pub requests: AtomicU64,
    /// Connections attempted.
    pub connects: AtomicU64,
    /// Requests sent a second time (never written the first time).
    pub retries: AtomicU64,
    /// Exchanges that failed (502 or 504), health checks not included.
    pub failures: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn idle(server: &Server) -> usize {
    server.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn last_error(server: &Server) -> Option<(String, Instant)> {
    server
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn error_json(error: Option<(String, Instant)>) -> serde_json::Value {
    error.map_or(
        serde_json::Value::Null,
        |(cause, at)| json!({ "cause": cause, "seconds_ago": at.elapsed().as_secs() }),
    )
}

/// One server's numbers.
fn server_status(server: &Server) -> serde_json::Value {
    let s = &server.stats;
    json!({
        "url": server.url,
        "health": server.health.name(),
        "in_flight": read(&server.in_flight),
        "idle_connections": idle(server),
        "requests": read(&s.requests),
        "connects": read(&s.connects),
        "retries": read(&s.retries),
        "failures": read(&s.failures),
        "last_error": error_json(last_error(server)),
    })
}

/// The health of several servers as one: `healthy` while one is, else `pending` while one is
/// not checked yet, `off` if none is checked, else `unhealthy`.
fn joint_health(servers: &[Server]) -> &'static str {
    let names: Vec<&str> = servers.iter().map(|s| s.health.name()).collect();
    ["healthy", "pending", "off"]
        .into_iter()
        .find(|state| names.contains(state))
        .unwrap_or("unhealthy")
}

/// The `upstream` object of the endpoint's `/status` line: one server's numbers; with several,
/// their sums (`url` lists them, `health` is [`joint_health`], `last_error` the latest) and each
/// one's under `servers`, with how long it is still passed over (`passed_over_ms`).
pub(crate) fn status(shared: &Shared) -> serde_json::Value {
    let servers = &shared.servers;
    if let [server] = &servers[..] {
        return json!({ "upstream": server_status(server) });
    }
    let sum = |f: &dyn Fn(&Server) -> u64| servers.iter().map(f).sum::<u64>();
    let latest = servers
        .iter()
        .filter_map(last_error)
        .max_by_key(|(_, at)| *at);
    json!({
        "upstream": {
            "url": shared.config.urls(),
            "health": joint_health(servers),
            "in_flight": sum(&|s| read(&s.in_flight)),
            "idle_connections": sum(&|s| idle(s) as u64),
            "requests": sum(&|s| read(&s.stats.requests)),
            "connects": sum(&|s| read(&s.stats.connects)),
            "retries": sum(&|s| read(&s.stats.retries)),
            "failures": sum(&|s| read(&s.stats.failures)),
            "last_error": error_json(latest),
            "servers": servers.iter().map(|s| {
                // How long it is still passed over after a failed connection (0: it is not).
                let mut one = server_status(s);
                one["passed_over_ms"] = json!(shared.passed_over_for(s).as_millis() as u64);
                one["weight"] = json!(s.weight);
                one
            }).collect::<Vec<_>>(),
        }
    })
}

fn sample(
    name: &'static str,
    help: &'static str,
    counter: bool,
    value: u64,
    labels: &[(&'static str, String)],
) -> HandlerSample {
    HandlerSample {
        name,
        help,
        counter,
        labels: labels.to_vec(),
        value: i64::try_from(value).unwrap_or(i64::MAX),
    }
}

/// The endpoint's upstream numbers for `/metrics`: with several servers, each one's, labelled
/// `server` (its URL), and whether it is passed over after a failed connection.
pub(crate) fn samples(shared: &Shared) -> Vec<HandlerSample> {
    let several = shared.servers.len() > 1;
    let mut samples = Vec::with_capacity(7 * shared.servers.len());
    for server in shared.servers.iter() {
        let labels = if several {
            vec![("server", server.url.clone())]
        } else {
            Vec::new()
        };
        let s = &server.stats;
        samples.extend([
            sample(
                "upstream_healthy",
                "1 unless the upstream's last health check failed.",
                false,
                server.health.gauge().unsigned_abs(),
                &labels,
            ),
            sample(
                "upstream_in_flight",
                "Requests in flight to the upstream.",
                false,
                read(&server.in_flight),
                &labels,
            ),
            sample(
                "upstream_idle_connections",
                "Kept-alive connections to the upstream not in use.",
                false,
                idle(server) as u64,
                &labels,
            ),
            sample(
                "upstream_requests",
                "Requests forwarded to the upstream.",
                true,
                read(&s.requests),
                &labels,
            ),
            sample(
                "upstream_connects",
                "Connections to the upstream attempted.",
                true,
                read(&s.connects),
                &labels,
            ),
            sample(
                "upstream_retries",
                "Requests sent again because the first attempt was never written.",
                true,
                read(&s.retries),
                &labels,
            ),
            sample(
                "upstream_failures",
                "Exchanges with the upstream that failed (answered 502 or 504).",
                true,
                read(&s.failures),
                &labels,
            ),
        ]);
        if several {
            samples.push(sample(
                "upstream_passed_over",
                "1 while the server is passed over after a failed connection.",
                false,
                u64::from(!shared.passed_over_for(server).is_zero()),
                &labels,
            ));
        }
    }
    samples
}
