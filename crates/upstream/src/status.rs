//! An upstream endpoint's line in `/status` and its numbers in `/metrics`.

use crate::Shared;
use common::handler::HandlerSample;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the exchanges, since the handler started.
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

fn idle(shared: &Shared) -> usize {
    shared.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// The `upstream` object of the endpoint's `/status` line.
pub(crate) fn status(shared: &Shared) -> serde_json::Value {
    let s = &shared.stats;
    let last_error = shared
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(cause, at)| json!({ "cause": cause, "seconds_ago": at.elapsed().as_secs() }));
    json!({
        "upstream": {
            "url": shared.config.url,
            "health": shared.health.name(),
            "in_flight": read(&shared.in_flight),
            "idle_connections": idle(shared),
            "requests": read(&s.requests),
            "connects": read(&s.connects),
            "retries": read(&s.retries),
            "failures": read(&s.failures),
            "last_error": last_error,
        }
    })
}

fn sample(name: &'static str, help: &'static str, counter: bool, value: u64) -> HandlerSample {
    HandlerSample {
        name,
        help,
        counter,
        labels: Vec::new(),
        value: i64::try_from(value).unwrap_or(i64::MAX),
    }
}

/// The endpoint's upstream numbers for `/metrics`.
pub(crate) fn samples(shared: &Shared) -> Vec<HandlerSample> {
    let s = &shared.stats;
    vec![
        sample(
            "upstream_healthy",
            "1 unless the upstream's last health check failed.",
            false,
            shared.health.gauge().unsigned_abs(),
        ),
        sample(
            "upstream_in_flight",
            "Requests in flight to the upstream.",
            false,
            read(&shared.in_flight),
        ),
        sample(
            "upstream_idle_connections",
            "Kept-alive connections to the upstream not in use.",
            false,
            idle(shared) as u64,
        ),
        sample(
            "upstream_requests",
            "Requests forwarded to the upstream.",
            true,
            read(&s.requests),
        ),
        sample(
            "upstream_connects",
            "Connections to the upstream attempted.",
            true,
            read(&s.connects),
        ),
        sample(
            "upstream_retries",
            "Requests sent again because the first attempt was never written.",
            true,
            read(&s.retries),
        ),
        sample(
            "upstream_failures",
            "Exchanges with the upstream that failed (answered 502 or 504).",
            true,
            read(&s.failures),
        ),
    ]
}
