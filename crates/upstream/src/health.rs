//! The upstream's health: with `health_path`, a `GET` to each server every `health_interval_ms`
//! (each bounded by the interval) over one kept-alive connection. A check that fails makes the
//! server unhealthy, one that answers 2xx healthy again. An unhealthy server gets no requests
//! while another is usable; while every server is unhealthy, new requests are overflow at once
//! ([`Health::available`]) and `/readyz` says not ready with the reason (`ready`). Without
//! `health_path` every server always counts as healthy, and failures show in `/status`.

use crate::{Server, Shared};
use relay::Conn;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const OFF: u8 = 0;
const PENDING: u8 = 1;
const HEALTHY: u8 = 2;
const UNHEALTHY: u8 = 3;

/// The health state, read on every admission (one atomic load).
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    /// Why the last check failed (for `/readyz`: no address, no server path).
    reason: Mutex<String>,
}

impl Health {
    /// `checked`: a health path is polled (the state starts pending until the first check);
    /// otherwise health is not checked and always good.
    pub fn new(checked: bool) -> Health {
        Health {
            state: AtomicU8::new(if checked { PENDING } else { OFF }),
            reason: Mutex::new(String::new()),
        }
    }

    /// False while the last check failed: admission then refuses new requests as overflow.
    pub fn available(&self) -> bool {
        self.state.load(Ordering::Acquire) != UNHEALTHY
    }

    /// For `/readyz`: ready once a check passed (or if none are made).
    pub fn ready(&self) -> Result<(), String> {
        match self.state.load(Ordering::Acquire) {
            OFF | HEALTHY => Ok(()),
            PENDING => Err("upstream health not checked yet".into()),
            _ => Err(format!(
                "upstream unhealthy ({})",
                self.reason.lock().unwrap_or_else(|p| p.into_inner())
            )),
        }
    }

    /// The state's name for `/status`: `off`, `pending`, `healthy` or `unhealthy`.
    pub fn name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            OFF => "off",
            PENDING => "pending",
            HEALTHY => "healthy",
            _ => "unhealthy",
        }
    }

    /// 1 unless the last check failed.
    pub fn gauge(&self) -> i64 {
        i64::from(self.available())
    }

    /// Record a check's result, keeping `unhealthy` (the servers unhealthy now) in step; true if
    /// the state changed.
    fn record(&self, result: &Result<(), String>, unhealthy: &AtomicUsize) -> bool {
        let to = match result {
            Ok(()) => HEALTHY,
            Err(why) => {
                *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why.clone();
                UNHEALTHY
            }
        };
        let from = self.state.swap(to, Ordering::AcqRel);
        match (from == UNHEALTHY, to == UNHEALTHY) {
            (false, true) => {
                unhealthy.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                unhealthy.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        from != to
    }
}

/// For `/readyz`: ready while one server is (healthy, or not checked at all). With one server,
/// its own reason; with several, each one's.
pub(crate) fn ready(servers: &[Server]) -> Result<(), String> {
    if let [server] = servers {
        return server.health.ready();
    }
    let mut why = Vec::with_capacity(servers.len());
    for (i, server) in servers.iter().enumerate() {
        match server.health.ready() {
            Ok(()) => return Ok(()),
            Err(e) => why.push(format!("urls[{i}]: {e}")),
        }
    }
    Err(format!("no upstream server ready ({})", why.join("; ")))
}

/// `server`'s poll, until the runtime ends: check, record, log a change, wait an interval.
pub(crate) async fn poll(shared: Arc<Shared>, server: usize) {
    let Some(path) = shared.config.health_path.clone() else {
        return;
    };
    let Some(at) = shared.servers.get(server) else {
        return;
    };
    let interval = shared.config.health_interval;
    let mut conn: Option<(Conn, Instant)> = None;
    loop {
        let result =
            match tokio::time::timeout(interval, check(&shared, at, &path, &mut conn)).await {
                Ok(result) => result,
                Err(_) => {
                    conn = None;
                    Err("health check timed out".to_string())
                }
            };
        if at.health.record(&result, &shared.unhealthy) {
            let several = shared.servers.len() > 1;
            match &result {
                Ok(()) => {
                    tracing::info!(endpoint = %shared.endpoint, upstream = %at.url, "upstream healthy")
                }
                Err(why) if several => tracing::warn!(
                    endpoint = %shared.endpoint,
                    upstream = %at.url,
                    cause = %why,
                    "upstream server unhealthy: its requests go to the others"
                ),
                Err(why) => tracing::warn!(
                    endpoint = %shared.endpoint,
                    upstream = %at.url,
                    cause = %why,
                    "upstream unhealthy: new requests are refused as overflow"
                ),
            }
        }
        if let Err(why) = &result {
            crate::exchange::remember(at, format!("health check: {why}"));
        }
        tokio::time::sleep(interval).await;
    }
}

/// One check over the kept connection (or a fresh one): Ok on a 2xx answer.
async fn check(
    shared: &Shared,
    at: &Server,
    path: &str,
    kept: &mut Option<(Conn, Instant)>,
) -> Result<(), String> {
    // The connection kept from the last check, unless it has been idle past
    // `keepalive_timeout_ms` (the upstream may be closing it that moment); a check lost on it
    // goes once more, on a fresh connection, before the upstream counts as down.
    let (status, c) = relay::probe_kept(
        kept.take(),
        shared.config.keepalive_timeout,
        &at.target,
        path,
        &at.authority,
    )
    .await?;
    *kept = crate::exchange::kept(shared, c);
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("health check answered {}", status.as_u16()))
    }
}
