//! A pool as `/status` shows it (one entry per worker process, and per slot left without one)
//! and as `/metrics` counts it.

use crate::state::PoolState;
use common::handler::HandlerSample;
use std::time::Instant;

/// A pool's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    /// Worker processes wanted: the endpoint's concurrency.
    pub workers_wanted: usize,
    /// Workers ready now (idle or busy).
    pub ready: usize,
    /// Config generation; each rolling restart adds one.
    pub generation: u64,
    /// A crash loop: `crash_loop_exits` unexpected exits within `crash_loop_window_ms`.
    pub crash_loop: bool,
    /// Unexpected exits (and failed starts) within the crash-loop window.
    pub recent_exits: usize,
    /// Unexpected exits (and failed starts) since the pool started.
    pub exits: u64,
    /// Workers replaced because they failed a health check while idle, since the pool started.
    pub health_failures: u64,
    /// The pool is stopping its workers.
    pub closing: bool,
    /// Every worker process, and every slot without one.
    pub workers: Vec<WorkerStatus>,
}

/// One worker process (or a slot waiting for one).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStatus {
    /// The concurrency slot (`FIDDLER_WORKER_ID`).
    pub slot: usize,
    /// Its pid (absent for a slot without a process).
    pub pid: Option<u32>,
    /// `starting`, `ready`, `busy`, `checking` (its health check, while idle), `retiring`,
    /// `exited`, or `down` (a slot without a process,
    /// waiting out its restart backoff; a slot about to get its process shows `starting`).
    pub state: &'static str,
    /// Config generation it was started with.
    pub generation: Option<u64>,
    /// Requests this process answered.
    pub requests: u64,
    /// Its resident memory, in bytes (last reading).
    pub rss_bytes: Option<u64>,
    /// Processes started for its slot after the first.
    pub restarts: u64,
    /// How the slot's previous process ended.
    pub last_exit: Option<String>,
    /// Time from start to ready, in ms.
    pub ready_ms: Option<f64>,
    /// Why it is being replaced, if it is.
    pub retiring_because: Option<String>,
    /// For a slot without a process: time until the next start, in ms.
    pub restart_in_ms: Option<u64>,
}

impl PoolStatus {
    /// The status of `state` at `now`.
    pub(crate) fn of(state: &PoolState, now: Instant) -> PoolStatus {
        let mut workers: Vec<WorkerStatus> = state
            .workers
            .iter()
            .map(|w| {
                let slot = state.slot.get(w.slot);
                WorkerStatus {
                    slot: w.slot,
                    pid: Some(w.pid),
                    state: w.state_name(),
                    generation: Some(w.generation),
                    requests: w.requests,
                    rss_bytes: w.rss,
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: slot.and_then(|s| s.last_exit.clone()),
                    ready_ms: w.ready_after.map(|d| d.as_secs_f64() * 1e3),
                    retiring_because: w
                        .retire
                        .clone()
                        .or_else(|| (w.generation < state.generation).then(|| "restart".into())),
                    restart_in_ms: None,
                }
            })
            .collect();
        for (i, slot) in state.slot.iter().enumerate().take(state.slots) {
            if state.workers.iter().any(|w| w.slot == i) {
                continue;
            }
            // Waiting out a restart backoff, or about to start.
            let down = slot.next_start.is_some_and(|t| t > now);
            workers.push(WorkerStatus {
                slot: i,
                pid: None,
                state: if down { "down" } else { "starting" },
                generation: None,
                requests: 0,
                rss_bytes: None,
                restarts: slot.restarts,
                last_exit: slot.last_exit.clone(),
                ready_ms: None,
                retiring_because: None,
                restart_in_ms: slot
                    .next_start
                    .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            });
        }
        workers.sort_by_key(|w| (w.slot, w.pid));
        PoolStatus {
            workers_wanted: state.slots,
            ready: state.ready_count(),
            generation: state.generation,
            crash_loop: state.crash_loop(now),
            recent_exits: state.recent_exits(now),
            exits: state.exits_total,
            health_failures: state.health_failures,
            closing: state.closing,
            workers,
        }
    }
}

fn gauge(name: &'static str, help: &'static str, value: i64) -> HandlerSample {
    HandlerSample {
        name,
        help,
        counter: false,
        labels: Vec::new(),
        value,
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The pool's numbers for `/metrics`: pool gauges, then per-slot series.
pub(crate) fn samples(state: &PoolState, now: Instant) -> Vec<HandlerSample> {
    let mut out = vec![
        gauge(
            "workers_wanted",
            "Worker processes wanted (the endpoint's concurrency).",
            to_i64(state.slots as u64),
        ),
        gauge(
            "workers_ready",
            "Worker processes ready now (idle or busy).",
            to_i64(state.ready_count() as u64),
        ),
        gauge(
            "workers_crash_loop",
            "1 while the endpoint's workers are crash-looping.",
            i64::from(state.crash_loop(now)),
        ),
        HandlerSample {
            name: "worker_exits",
            help: "Unexpected worker exits and failed starts.",
            counter: true,
            labels: Vec::new(),
            value: to_i64(state.exits_total),
        },
        HandlerSample {
            name: "worker_health_failures",
            help: "Workers replaced because they failed a health check while idle.",
            counter: true,
            labels: Vec::new(),
            value: to_i64(state.health_failures),
        },
    ];
    for (i, slot) in state.slot.iter().enumerate().take(state.slots) {
        let label = || vec![("slot", i.to_string())];
        let holder = state
            .workers
            .iter()
            .filter(|w| w.slot == i && w.exit.is_none())
            .max_by_key(|w| (w.is_ready(), w.key));
        out.push(HandlerSample {
            name: "worker_requests",
            help: "Requests answered by the slot's worker processes.",
            counter: true,
            labels: label(),
            value: to_i64(slot.requests),
        });
        out.push(HandlerSample {
            name: "worker_restarts",
            help: "Worker processes started for the slot after its first.",
            counter: true,
            labels: label(),
            value: to_i64(slot.restarts),
        });
        out.push(HandlerSample {
            name: "worker_ready",
            help: "1 while the slot's worker is ready.",
            counter: false,
            labels: label(),
            value: i64::from(holder.is_some_and(|w| w.is_ready())),
        });
        out.push(HandlerSample {
            name: "worker_busy",
            help: "1 while the slot's worker runs a request.",
            counter: false,
            labels: label(),
            value: i64::from(holder.is_some_and(|w| w.state_name() == "busy")),
        });
        out.push(HandlerSample {
            name: "worker_rss_bytes",
            help: "Resident memory of the slot's worker process.",
            counter: false,
            labels: label(),
            value: to_i64(holder.and_then(|w| w.rss).unwrap_or(0)),
        });
    }
    out
}
