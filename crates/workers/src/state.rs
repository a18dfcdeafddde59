//! A pool's state and every decision about it, kept free of blocking I/O so that tests drive it
//! with fake workers: which worker a request gets, what a worker's return means, and what the
//! supervisor starts and stops next ([`PoolState::plan`]).
//!
//! A worker's life: `Starting` (spawned, socket not yet accepting) → `Idle` ⇄ `Busy` (ready; one
//! request at a time) → `Stopping` (SIGTERM sent; SIGKILL after `kill_grace`) → removed once its
//! waiter has reaped it. Beside the phase, a worker may *want* retiring (`retire`: it reached
//! `max_requests` or `max_rss_bytes`, or a rolling restart made it outdated): it keeps serving
//! until a replacement for its slot is ready, then it is *due* (never checked out again) and is
//! stopped as soon as it is idle. Replacements start one at a time, so a roll never takes more
//! than one extra process and never a slot's capacity.
//!
//! Except while memory is short (the traffic light's memory level at red): then a worker that
//! wants recycling (`max_requests`, `max_rss_bytes`) is due at once, stopped once idle, and its
//! slot's new process starts only after it has exited, so the two never hold memory together.
//! The slot's capacity dips meanwhile; an out-of-memory kill would cost more.

use crate::proxy::Conn;
use children::{Group, Registered};
use config::WorkerConfig;
use light::TrafficLight;
use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a worker is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Spawned; its socket does not accept yet.
    Starting,
    /// Ready, no request in flight.
    Idle,
    /// Ready, one request in flight.
    Busy,
    /// Asked to stop; waiting for it to exit.
    Stopping,
}

/// A live worker process: its group, registered in the server's registry for as long as it lives.
#[derive(Debug)]
pub(crate) struct Process {
    /// The worker's process group.
    pub(crate) group: Arc<Group>,
    /// Kills and unregisters the group when dropped.
    pub(crate) _registered: Registered,
}

/// Why and since when a worker is being stopped.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    since: Instant,
    killed: bool,
    reason: String,
    /// Counts as a failure of the slot (backoff, crash loop), unlike a retirement.
    failure: bool,
}

/// One worker process of the pool.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) key: u64,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    /// `None` only for the fake workers of unit tests.
    pub(crate) process: Option<Process>,
    pub(crate) socket: PathBuf,
    pub(crate) phase: Phase,
    /// The kept-alive connection, while idle, and since when it has been idle.
    pub(crate) conn: Option<(Conn, Instant)>,
    /// Since when it has been idle (ready, or back from its last request or health check).
    pub(crate) idle_since: Instant,
    /// Busy with its health check, not a request.
    pub(crate) checking: bool,
    pub(crate) requests: u64,
    /// Requests after which it wants retiring (`max_requests` plus its jitter).
    pub(crate) limit: Option<u64>,
    /// Why it wants retiring, once it does.
    pub(crate) retire: Option<String>,
    /// Its replacement is ready (or its slot is gone): never checked out again, stopped when idle.
    pub(crate) due: bool,
    /// The worker this one was started to replace, until it is ready.
    pub(crate) replaces: Option<u64>,
    pub(crate) started: Instant,
    pub(crate) ready_after: Option<Duration>,
    pub(crate) stop: Option<Stop>,
    /// How it ended, once its waiter reaped it.
    pub(crate) exit: Option<String>,
    pub(crate) rss: Option<u64>,
}

impl Worker {
    /// A freshly spawned worker.
    pub(crate) fn new(
        spawn: &Spawn,
        pid: u32,
        process: Option<Process>,
        socket: PathBuf,
        limit: Option<u64>,
        now: Instant,
    ) -> Worker {
        Worker {
            key: spawn.key,
            slot: spawn.slot,
            generation: spawn.generation,
            pid,
            process,
            socket,
            phase: Phase::Starting,
            conn: None,
            idle_since: now,
            checking: false,
            requests: 0,
            limit,
            retire: None,
            due: false,
            replaces: spawn.replaces,
            started: now,
            ready_after: None,
            stop: None,
            exit: None,
            rss: None,
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(p) = &self.process {
            p.group.signal(signal);
        }
    }

    /// Ready (idle or busy) and alive.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Busy) && self.exit.is_none()
    }

    /// Neither stopping nor dead nor due: it holds its slot.
    fn holds_slot(&self) -> bool {
        self.stop.is_none() && self.exit.is_none() && !self.due
    }

    /// The state name shown in `/status`.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.phase {
            _ if self.exit.is_some() => "exited",
            Phase::Stopping => "retiring",
            _ if self.due => "retiring",
            Phase::Starting => "starting",
            Phase::Idle => "ready",
            Phase::Busy if self.checking => "checking",
            Phase::Busy => "busy",
        }
    }

    /// SIGTERM the group now; the supervisor SIGKILLs it after `kill_grace`.
    fn begin_stop(&mut self, now: Instant, reason: impl Into<String>, failure: bool) {
        self.stop = Some(Stop {
            since: now,
            killed: false,
            reason: reason.into(),
            failure,
        });
        self.phase = Phase::Stopping;
        self.conn = None;
        self.signal(Signal::SIGTERM);
    }
}

/// Per-slot history: survives the slot's workers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slot {
    /// Processes started for the slot after its first.
    pub(crate) restarts: u64,
    started_once: bool,
    /// Consecutive failures (exits, failed starts): the backoff's exponent.
    failures: u32,
    /// No process is started for the slot before this.
    pub(crate) next_start: Option<Instant>,
    /// How the slot's latest process ended.
    pub(crate) last_exit: Option<String>,
    /// Requests answered by the slot's processes, all of them.
    pub(crate) requests: u64,
}

/// A process the supervisor should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spawn {
    pub(crate) key: u64,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    /// The worker it replaces once ready (a recycle or a rolling restart).
    pub(crate) replaces: Option<u64>,
}

/// What the supervisor should do now.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Processes to start.
    pub(crate) spawns: Vec<Spawn>,
    /// The pool is closed and every worker is gone: the supervisor ends.
    pub(crate) done: bool,
    /// Some worker left the pool (its group is unregistered): what it left behind outside its
    /// group may now be collected (`children::kill_orphans`).
    pub(crate) removed: bool,
    /// The next deadline (a kill, a ready timeout, a backoff's end, a health check), if any.
    pub(crate) wake_at: Option<Instant>,
    /// Idle workers due for their health check, taken out of service (busy) until it ends.
    pub(crate) checks: Vec<HealthCheck>,
}

/// An idle worker's health check to make (see [`PoolState::health_checked`]).
#[derive(Debug)]
pub(crate) struct HealthCheck {
    pub(crate) key: u64,
    pub(crate) socket: PathBuf,
    /// Its kept-alive connection and since when it has been idle.
    pub(crate) conn: Option<(Conn, Instant)>,
}

/// What a checked-out worker gives the request.
#[derive(Debug)]
pub(crate) struct Checkout {
    pub(crate) key: u64,
    pub(crate) pid: u32,
    pub(crate) socket: PathBuf,
    /// The worker's kept-alive connection and since when it has been idle (see
    /// [`crate::pool::Lease::take_conn`]).
    pub(crate) conn: Option<(Conn, Instant)>,
}

/// Everything about one pool, behind its mutex.
#[derive(Debug)]
pub(crate) struct PoolState {
    pub(crate) endpoint: Arc<str>,
    pub(crate) config: Arc<WorkerConfig>,
    /// Bumped by every config change and rolling restart; workers of older ones are outdated.
    pub(crate) generation: u64,
    /// Processes wanted (the endpoint's concurrency).
    pub(crate) slots: usize,
    pub(crate) slot: Vec<Slot>,
    pub(crate) workers: Vec<Worker>,
    next_key: u64,
    /// Unexpected exits within the crash-loop window.
    exits: VecDeque<Instant>,
    /// Unexpected exits ever.
    pub(crate) exits_total: u64,
    /// Workers replaced because they failed a health check, ever.
    pub(crate) health_failures: u64,
    /// Handlers using the pool; at 0 it closes.
    pub(crate) users: usize,
    /// No new work: stop every worker once idle, start none.
    pub(crate) closing: bool,
    /// Bumped on every change the supervisor or a waiting request must look at.
    pub(crate) epoch: u64,
    /// The server's traffic light: its memory level orders a recycle (one atomic load).
    light: TrafficLight,
}

impl PoolState {
    /// A pool of `slots` workers of `config`, none started yet, used by one handler; `light`
    /// says when memory is short.
    pub(crate) fn new(
        endpoint: &str,
        config: WorkerConfig,
        slots: usize,
        light: TrafficLight,
    ) -> PoolState {
        PoolState {
            endpoint: endpoint.into(),
            config: Arc::new(config),
            generation: 1,
            slots,
            slot: vec![Slot::default(); slots],
            workers: Vec::new(),
            next_key: 1,
            exits: VecDeque::new(),
            exits_total: 0,
            health_failures: 0,
            users: 1,
            closing: false,
            epoch: 0,
            light,
        }
    }

    /// Memory is short: recycle by retiring first (see the module docs).
    fn memory_short(&self) -> bool {
        self.light.memory_short()
    }

    fn worker(&mut self, key: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.key == key)
    }

    /// Workers ready now (idle or busy).
    pub(crate) fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.is_ready()).count()
    }

    /// Unexpected exits within the crash-loop window ending `now`.
    pub(crate) fn recent_exits(&self, now: Instant) -> usize {
        let window = self.config.crash_loop.window;
        self.exits
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < window)
            .count()
    }

    /// A crash loop: at least `crash_loop_exits` unexpected exits within the window.
    pub(crate) fn crash_loop(&self, now: Instant) -> bool {
        self.recent_exits(now) >= self.config.crash_loop.exits.get() as usize
    }

    /// Cannot serve any time soon: crash-looping with no worker ready.
    pub(crate) fn unavailable(&self, now: Instant) -> bool {
        self.crash_loop(now) && self.ready_count() == 0
    }

    /// The latest exit reason of any slot, for error messages.
    pub(crate) fn last_exit(&self) -> Option<&str> {
        self.slot.iter().rev().find_map(|s| s.last_exit.as_deref())
    }

    /// Apply a (possibly) new config and size: a changed config starts a rolling restart.
    pub(crate) fn reconfigure(&mut self, config: WorkerConfig, slots: usize) {
        if *self.config != config {
            let roll = self.config.starts_other_workers(&config);
            self.config = Arc::new(config);
            if roll {
                self.generation += 1;
                tracing::info!(endpoint = %self.endpoint, generation = self.generation, "worker config changed: rolling restart");
            } else {
                // A timeout, a limit read per request, the health checks: the workers need no
                // restart (a model is not loaded again for them).
                tracing::info!(endpoint = %self.endpoint, "worker config changed: applied to the running workers");
            }
        }
        if slots != self.slots {
            tracing::info!(endpoint = %self.endpoint, from = self.slots, to = slots, "worker count changed");
            self.slots = slots;
            if self.slot.len() < slots {
                self.slot.resize(slots, Slot::default());
            }
        }
    }

    /// Replace every worker, one at a time, each once its successor is ready.
    pub(crate) fn restart(&mut self, why: &str) {
        self.generation += 1;
        tracing::info!(endpoint = %self.endpoint, generation = self.generation, why, "rolling restart of the workers");
    }

    /// Take an idle worker for one request: never one that is starting, stopping, dead or due.
    /// Up-to-date workers first, then by slot.
    pub(crate) fn checkout(&mut self) -> Option<Checkout> {
        let generation = self.generation;
        let w = self
            .workers
            .iter_mut()
            .filter(|w| w.phase == Phase::Idle && w.holds_slot())
            .min_by_key(|w| (w.retire.is_some() || w.generation < generation, w.slot))?;
        w.phase = Phase::Busy;
        Some(Checkout {
            key: w.key,
            pid: w.pid,
            socket: w.socket.clone(),
            conn: w.conn.take(),
        })
    }

    /// A busy worker is done with its request: idle again, or stopped if the pool is closing or
    /// its replacement is ready.
    fn release(&mut self, key: u64, now: Instant, conn: Option<Conn>) {
        let closing = self.closing;
        let Some(w) = self.worker(key) else { return };
        if w.phase != Phase::Busy {
            return;
        }
        if closing {
            w.begin_stop(now, "server stopping", false);
        } else if w.due {
            let reason = w.retire.clone().unwrap_or_else(|| "retired".into());
            w.begin_stop(now, reason, false);
        } else {
            w.phase = Phase::Idle;
            w.idle_since = now;
            w.conn = conn.map(|c| (c, now));
        }
    }

    /// The worker answered its request. `rss` is its resident memory now, if measured.
    pub(crate) fn answered(
        &mut self,
        key: u64,
        now: Instant,
        rss: Option<u64>,
        conn: Option<Conn>,
    ) {
        let max_rss = self.config.max_rss_bytes;
        let memory_short = self.memory_short();
        let Some(w) = self.worker(key) else { return };
        w.requests += 1;
        if rss.is_some() {
            w.rss = rss;
        }
        if w.retire.is_none() {
            if w.limit.is_some_and(|limit| w.requests >= limit) {
                w.retire = Some(format!(
                    "recycled after {} requests (max_requests)",
                    w.requests
                ));
            } else if let (Some(rss), Some(max)) = (rss, max_rss) {
                if rss > max.get() {
                    w.retire = Some(format!("recycled at {rss} bytes resident (max_rss_bytes)"));
                }
            }
        }
        if memory_short && w.retire.is_some() && w.stop.is_none() {
            // Retire first: stopped as it goes idle below, replaced once it has exited.
            w.due = true;
        }
        let slot = w.slot;
        if let Some(s) = self.slot.get_mut(slot) {
            s.requests += 1;
            s.failures = 0;
        }
        self.release(key, now, conn);
    }

    /// The worker's request ran past `timeout_ms`: stop it now and replace it at once.
    pub(crate) fn timed_out(&mut self, key: u64, now: Instant) {
        let timeout = self.config.timeout;
        let Some(w) = self.worker(key) else { return };
        w.begin_stop(
            now,
            format!(
                "killed: a request ran past timeout_ms ({} ms)",
                timeout.as_millis()
            ),
            false,
        );
        let slot = w.slot;
        if let Some(s) = self.slot.get_mut(slot) {
            s.next_start = Some(now);
        }
    }

    /// The worker's health check ended: `Ok` with the connection it left open (if any) puts it
    /// back in service; `Err` (why) stops it and starts its replacement at once, as a request
    /// past `timeout_ms` does.
    pub(crate) fn health_checked(
        &mut self,
        key: u64,
        now: Instant,
        result: Result<Option<Conn>, String>,
    ) {
        let Some(w) = self.worker(key) else { return };
        if w.phase != Phase::Busy || !w.checking {
            return;
        }
        w.checking = false;
        match result {
            Ok(conn) => self.release(key, now, conn),
            Err(why) => {
                w.begin_stop(
                    now,
                    format!("killed: failed its health check ({why})"),
                    false,
                );
                let slot = w.slot;
                self.health_failures += 1;
                if let Some(s) = self.slot.get_mut(slot) {
                    s.next_start = Some(now);
                }
            }
        }
    }

    /// How the worker ended, if its waiter has reaped it (`Some(None)`: alive; `None`: unknown).
    pub(crate) fn exit_of(&mut self, key: u64) -> Option<Option<String>> {
        self.worker(key).map(|w| w.exit.clone())
    }

    /// The exchange failed and the worker is dead: leave it to the supervisor.
    pub(crate) fn failed_dead(&mut self, key: u64) {
        if let Some(w) = self.worker(key) {
            w.phase = Phase::Stopping;
            w.conn = None;
        }
    }

    /// The exchange failed but the worker lives. If its socket refused a connection it is broken:
    /// stop it (a failure); otherwise it keeps serving, on a fresh connection next time.
    pub(crate) fn failed_alive(&mut self, key: u64, now: Instant, unreachable: bool) {
        if unreachable {
            if let Some(w) = self.worker(key) {
                w.begin_stop(now, "its socket refused connections", true);
            }
        } else {
            self.release(key, now, None);
        }
    }

    /// The worker's answer was too large: it lives, its connection was dropped.
    pub(crate) fn answer_dropped(&mut self, key: u64, now: Instant) {
        self.release(key, now, None);
    }

    /// A request's handler unwound while holding the worker: the worker's state is unknown, stop it.
    pub(crate) fn abandoned(&mut self, key: u64, now: Instant) {
        if let Some(w) = self.worker(key) {
            if w.phase == Phase::Busy {
                w.begin_stop(now, "its request's handler failed", false);
            }
        }
    }

    /// The worker's waiter reaped it.
    pub(crate) fn exited(&mut self, key: u64, how: String) {
        if let Some(w) = self.worker(key) {
            w.exit = Some(how);
            w.conn = None;
        }
    }

    /// True while the worker is starting (its readiness probe keeps trying).
    pub(crate) fn is_starting(&self, key: u64) -> bool {
        self.workers
            .iter()
            .any(|w| w.key == key && w.phase == Phase::Starting && w.exit.is_none())
    }

    /// The worker's socket accepted (and `ready_path` answered 2xx): it is ready. False if it
    /// stopped meanwhile.
    pub(crate) fn mark_ready(&mut self, key: u64, conn: Conn, now: Instant) -> bool {
        let endpoint = self.endpoint.clone();
        let Some(w) = self.worker(key) else {
            return false;
        };
        if w.phase != Phase::Starting || w.exit.is_some() {
            return false;
        }
        w.phase = Phase::Idle;
        w.idle_since = now;
        w.conn = Some((conn, now));
        let took = now.saturating_duration_since(w.started);
        w.ready_after = Some(took);
        tracing::info!(%endpoint, slot = w.slot, pid = w.pid, ready_ms = took.as_millis() as u64, "worker ready");
        true
    }

    /// Reserve a key for a process to be started.
    fn spawn(&mut self, slot: usize, replaces: Option<u64>) -> Spawn {
        let key = self.next_key;
        self.next_key += 1;
        Spawn {
            key,
            slot,
            generation: self.generation,
            replaces,
        }
    }

    /// A planned process was started.
    pub(crate) fn insert(&mut self, worker: Worker) {
        if let Some(s) = self.slot.get_mut(worker.slot) {
            if s.started_once {
                s.restarts += 1;
            }
            s.started_once = true;
        }
        self.workers.push(worker);
    }

    /// A planned process could not be started: a failure of its slot.
    pub(crate) fn spawn_failed(&mut self, slot: usize, now: Instant, why: String) {
        tracing::warn!(endpoint = %self.endpoint, slot, cause = %why, "cannot start a worker");
        self.failure(slot, now, why);
    }

    fn failure(&mut self, slot: usize, now: Instant, why: String) {
        self.exits.push_back(now);
        self.exits_total += 1;
        let (initial, max) = (self.config.restart_backoff, self.config.max_restart_backoff);
        if let Some(s) = self.slot.get_mut(slot) {
            s.failures = s.failures.saturating_add(1);
            s.next_start = Some(now + backoff(initial, max, s.failures));
            s.last_exit = Some(why);
        }
    }

    /// A reaped worker leaves the pool: record how it ended, and count it against its slot
    /// unless the pool asked it to stop.
    fn record_exit(&mut self, w: Worker, now: Instant) {
        let how = w.exit.unwrap_or_default();
        let (endpoint, slot, pid) = (self.endpoint.clone(), w.slot, w.pid);
        match w.stop {
            Some(stop) if !stop.failure => {
                tracing::info!(%endpoint, slot, pid, reason = %stop.reason, exit = %how, "worker stopped");
                if let Some(s) = self.slot.get_mut(slot) {
                    s.last_exit = Some(format!("{}; {how}", stop.reason));
                }
            }
            Some(stop) => {
                tracing::warn!(%endpoint, slot, pid, reason = %stop.reason, exit = %how, "worker failed");
                self.failure(slot, now, format!("{}; {how}", stop.reason));
            }
            None if w.ready_after.is_none() => {
                tracing::warn!(%endpoint, slot, pid, exit = %how, "worker exited before it was ready");
                self.failure(slot, now, format!("exited before ready: {how}"));
            }
            None => {
                tracing::warn!(%endpoint, slot, pid, exit = %how, requests = w.requests, "worker exited");
                self.failure(slot, now, how);
            }
        }
    }

    /// Decide what the supervisor does now: forget reaped workers, SIGKILL those past their
    /// grace, stop what must stop, and name the processes to start. Signals are sent from here.
    pub(crate) fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        let cfg = self.config.clone();
        // The reaped leave (a busy one stays until its request hands it back).
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].exit.is_some() && self.workers[i].phase != Phase::Busy {
                let w = self.workers.remove(i);
                self.record_exit(w, now);
                plan.removed = true;
            } else {
                i += 1;
            }
        }
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= cfg.crash_loop.window)
        {
            self.exits.pop_front();
        }
        let mut wake = |at: Instant| {
            plan.wake_at = Some(plan.wake_at.map_or(at, |w: Instant| w.min(at)));
        };
        // Past the grace: SIGKILL.
        for w in &mut self.workers {
            if let Some(stop) = &mut w.stop {
                let kill_at = stop.since + cfg.kill_grace;
                if stop.killed {
                    continue;
                }
                if now >= kill_at {
                    stop.killed = true;
                    tracing::warn!(endpoint = %self.endpoint, pid = w.pid, "worker did not stop within kill_grace_ms; SIGKILL");
                    if let Some(p) = &w.process {
                        p.group.signal(Signal::SIGKILL);
                    }
                } else {
                    wake(kill_at);
                }
            }
        }
        if self.closing {
            for w in &mut self.workers {
                if matches!(w.phase, Phase::Starting | Phase::Idle) && w.exit.is_none() {
                    w.begin_stop(now, "server stopping", false);
                    wake(now + cfg.kill_grace);
                }
            }
            plan.done = self.workers.is_empty();
            return plan;
        }
        // A replacement that is ready makes its predecessor due.
        let successors: Vec<(u64, u64)> = self
            .workers
            .iter()
            .filter(|w| w.is_ready())
            .filter_map(|w| Some((w.key, w.replaces?)))
            .collect();
        for (key, old) in successors {
            if let Some(w) = self.worker(key) {
                w.replaces = None;
            }
            if let Some(w) = self.worker(old) {
                w.due = true;
            }
        }
        let (slots, generation) = (self.slots, self.generation);
        let health = cfg.health_path.is_some();
        let memory_short = self.memory_short();
        for w in &mut self.workers {
            if w.stop.is_some() || w.exit.is_some() {
                continue;
            }
            if memory_short && w.retire.is_some() && !w.due && w.phase != Phase::Starting {
                tracing::info!(endpoint = %self.endpoint, slot = w.slot, pid = w.pid, "memory short: retiring the worker before its replacement starts");
                w.due = true;
            }
            if w.slot >= slots {
                w.due = true;
                w.retire
                    .get_or_insert_with(|| "worker count reduced".into());
            }
            match w.phase {
                Phase::Idle if w.due => {
                    let reason = w.retire.clone().unwrap_or_else(|| "retired".into());
                    w.begin_stop(now, reason, false);
                    wake(now + cfg.kill_grace);
                }
                Phase::Idle if health => {
                    let at = w.idle_since + cfg.health_interval;
                    if now >= at {
                        w.phase = Phase::Busy;
                        w.checking = true;
                        plan.checks.push(HealthCheck {
                            key: w.key,
                            socket: w.socket.clone(),
                            conn: w.conn.take(),
                        });
                    } else {
                        wake(at);
                    }
                }
                Phase::Starting if w.generation < generation || w.due => {
                    w.begin_stop(now, "no longer needed before it was ready", false);
                    wake(now + cfg.kill_grace);
                }
                Phase::Starting => {
                    let deadline = w.started + cfg.ready_timeout;
                    if now >= deadline {
                        let why = format!(
                            "not ready within ready_timeout_ms ({} ms)",
                            cfg.ready_timeout.as_millis()
                        );
                        w.begin_stop(now, why, true);
                        wake(now + cfg.kill_grace);
                    } else {
                        wake(deadline);
                    }
                }
                _ => {}
            }
        }
        // Starts: a slot without a process gets one once its backoff is over; an outdated or
        // retiring worker gets a successor, one roll at a time.
        let mut rolling = self
            .workers
            .iter()
            .any(|w| w.phase == Phase::Starting && w.replaces.is_some() && w.stop.is_none());
        for slot in 0..slots {
            let holders: Vec<&Worker> = self
                .workers
                .iter()
                .filter(|w| w.slot == slot && w.holds_slot())
                .collect();
            // While memory is short, a slot whose retired process still lives waits for its
            // exit (the waiter's reaping wakes the supervisor).
            let retiring = self.workers.iter().any(|w| {
                w.slot == slot && w.exit.is_none() && !w.holds_slot() && w.retire.is_some()
            });
            if memory_short && retiring {
                continue;
            }
            let next_start = self.slot.get(slot).and_then(|s| s.next_start);
            if next_start.is_some_and(|t| now < t) {
                if let Some(t) = next_start {
                    wake(t);
                }
                continue;
            }
            let replace = match holders.as_slice() {
                [] => None,
                [w] if !rolling
                    && w.is_ready()
                    && (w.retire.is_some() || w.generation < generation) =>
                {
                    Some(w.key)
                }
                _ => continue,
            };
            if replace.is_some() {
                rolling = true;
            }
            let spawn = self.spawn(slot, replace);
            plan.spawns.push(spawn);
        }
        plan
    }
}

/// The restart delay after `failures` consecutive failures: `initial`, doubling, at most `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::light::Light;

    fn config(extra: &str) -> WorkerConfig {
        let text =
            format!("[[endpoint]]\npath = \"/w\"\n[endpoint.worker]\ncommand = [\"x\"]\n{extra}\n");
        match config::Config::from_toml(&text, "t.toml")
            .unwrap()
            .endpoints[0]
            .handler
            .clone()
        {
            config::HandlerConfig::Worker(w) => w,
            other => panic!("not a worker: {other:?}"),
        }
    }

    /// Start what the plan asks for, as fake workers (no process).
    fn start_planned(s: &mut PoolState, plan: &Plan, now: Instant) -> Vec<u64> {
        let mut keys = Vec::new();
        for spawn in &plan.spawns {
            let limit = s.config.max_requests.map(|m| m.get());
            let w = Worker::new(
                spawn,
                1000 + spawn.key as u32,
                None,
                "/x".into(),
                limit,
                now,
            );
            s.insert(w);
            keys.push(spawn.key);
        }
        keys
    }

    fn ready_all(s: &mut PoolState, now: Instant) {
        let starting: Vec<u64> = s
            .workers
            .iter()
            .filter(|w| w.phase == Phase::Starting && w.stop.is_none())
            .map(|w| w.key)
            .collect();
        for key in starting {
            // A fake connection is not needed: mark ready by hand.
            let w = s.worker(key).unwrap();
            w.phase = Phase::Idle;
            w.ready_after = Some(Duration::from_millis(1));
        }
        let _ = now;
    }

    fn reap(s: &mut PoolState, key: u64, how: &str) {
        s.exited(key, how.into());
    }

    fn states(s: &PoolState) -> Vec<(usize, &'static str)> {
        let mut v: Vec<_> = s.workers.iter().map(|w| (w.slot, w.state_name())).collect();
        v.sort();
        v
    }

    #[test]
    fn an_idle_worker_is_checked_after_health_interval_ms_and_replaced_if_it_fails() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        let mut s = PoolState::new(
            "/w",
            config("health_path = \"/up\"\nhealth_interval_ms = 100"),
            1,
            TrafficLight::fixed(Light::Green),
        );
        let plan = s.plan(t);
        let key = start_planned(&mut s, &plan, t)[0];
        ready_all(&mut s, t);
        // Within the interval: no check, a wake-up at its end.
        let plan = s.plan(t + ms(50));
        assert!(plan.checks.is_empty());
        assert_eq!(plan.wake_at, Some(t + ms(100)));
        // A request starts the idle time again.
        let c = s.checkout().unwrap();
        s.answered(c.key, t + ms(60), None, None);
        assert!(s.plan(t + ms(120)).checks.is_empty());
        // Past it: checked, and out of service while it is.
        let plan = s.plan(t + ms(160));
        assert_eq!(plan.checks.len(), 1);
        assert_eq!(plan.checks[0].key, key);
        assert_eq!(states(&s), [(0, "checking")]);
        assert!(s.checkout().is_none());
        assert!(s.plan(t + ms(170)).checks.is_empty(), "one check at a time");
        s.health_checked(key, t + ms(170), Ok(None));
        assert_eq!(states(&s), [(0, "ready")]);
        assert_eq!(
            s.worker(key).unwrap().requests,
            1,
            "a check is not a request"
        );
        // A failed check: stopped, counted, and a successor started at once.
        assert_eq!(s.plan(t + ms(270)).checks.len(), 1);
        s.health_checked(
            key,
            t + ms(271),
            Err("answered 503 Service Unavailable".into()),
        );
        assert_eq!(s.health_failures, 1);
        assert_eq!(states(&s), [(0, "retiring")]);
        let stop = s.worker(key).unwrap().stop.as_ref().unwrap();
        assert_eq!(
            stop.reason,
            "killed: failed its health check (answered 503 Service Unavailable)"
        );
        assert_eq!(s.plan(t + ms(272)).spawns.len(), 1);
    }

    #[test]
    fn one_process_per_slot_and_no_checkout_before_ready() {
        let t = Instant::now();
        let mut s = PoolState::new("/w", config(""), 2, TrafficLight::fixed(Light::Green));
        let plan = s.plan(t);
        assert_eq!(plan.spawns.len(), 2);
        start_planned(&mut s, &plan, t);
        assert!(s.checkout().is_none(), "no worker is ready");
        assert!(s.plan(t).spawns.is_empty(), "every slot has its process");
        ready_all(&mut s, t);
        let a = s.checkout().unwrap();
        let b = s.checkout().unwrap();
        assert_ne!(a.key, b.key);
        assert!(s.checkout().is_none(), "single in-flight: both are busy");
        s.answered(a.key, t, None, None);
        assert_eq!(s.checkout().unwrap().key, a.key);
    }

    #[test]
    fn a_recycled_worker_serves_until_its_successor_is_ready_then_stops_when_idle() {
        let t = Instant::now();
        let mut s = PoolState::new(
            "/w",
            config("max_requests = 2"),
            1,
            TrafficLight::fixed(Light::Green),
        );
        let plan = s.plan(t);
        let first = start_planned(&mut s, &plan, t)[0];
        ready_all(&mut s, t);
        for _ in 0..2 {
            let c = s.checkout().unwrap();
            s.answered(c.key, t, None, None);
        }
        assert!(s.worker(first).unwrap().retire.is_some());
        let plan = s.plan(t);
        assert_eq!(plan.spawns.len(), 1);
        assert_eq!(plan.spawns[0].replaces, Some(first));
        start_planned(&mut s, &plan, t);
        // While the successor starts, the old one still serves: no dip.
        let busy = s.checkout().unwrap();
        assert_eq!(busy.key, first);
        assert!(s.plan(t).spawns.is_empty(), "one successor at a time");
        ready_all(&mut s, t);
        s.plan(t);
        assert_eq!(states(&s), [(0, "ready"), (0, "retiring")]);
        // The busy predecessor is never checked out again and stops once its request is done.
        let next = s.checkout().unwrap();
        assert_ne!(next.key, first);
        s.answered(first, t, None, None);
        assert_eq!(s.worker(first).unwrap().phase, Phase::Stopping);
        reap(&mut s, first, "exited with status 0");
        s.plan(t);
        assert_eq!(s.workers.len(), 1);
        assert_eq!(s.recent_exits(t), 0, "a retirement is not a failure");
        assert!(s.slot[0]
            .last_exit
            .as_deref()
            .unwrap()
            .contains("max_requests"));
        assert_eq!(s.slot[0].restarts, 1);
    }

    #[test]
    fn while_memory_is_short_a_recycled_worker_is_retired_before_its_successor_starts() {
        let t = Instant::now();
        let light = TrafficLight::fixed(Light::Green);
        light.set_memory(Light::Red);
        let mut s = PoolState::new("/w", config("max_requests = 2"), 1, light);
        let plan = s.plan(t);
        let first = start_planned(&mut s, &plan, t)[0];
        ready_all(&mut s, t);
        let c = s.checkout().unwrap();
        s.answered(c.key, t, None, None);
        let c = s.checkout().unwrap();
        // Its last request: it stops as it is handed back, and nothing is started beside it.
        s.answered(c.key, t, None, None);
        assert_eq!(s.worker(first).unwrap().phase, Phase::Stopping);
        assert!(s.checkout().is_none(), "the slot's capacity dips");
        assert!(s.plan(t).spawns.is_empty(), "no successor while it lives");
        reap(&mut s, first, "exited with status 0");
        let plan = s.plan(t);
        assert_eq!(plan.spawns.len(), 1);
        assert_eq!(
            plan.spawns[0].replaces, None,
            "a fresh process for the empty slot"
        );
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        assert!(s.checkout().is_some());
        assert_eq!(s.recent_exits(t), 0, "a retirement is not a failure");
        assert!(s.slot[0]
            .last_exit
            .as_deref()
            .unwrap()
            .contains("max_requests"));
    }

    #[test]
    fn memory_running_short_turns_a_pending_recycle_into_retire_first() {
        let t = Instant::now();
        let light = TrafficLight::fixed(Light::Green);
        let mut s = PoolState::new("/w", config("max_rss_bytes = 1000"), 2, light.clone());
        let plan = s.plan(t);
        let keys = start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        let c = s.checkout().unwrap();
        s.answered(c.key, t, Some(5000), None);
        assert!(s.worker(c.key).unwrap().retire.is_some());
        assert_eq!(
            s.worker(c.key).unwrap().phase,
            Phase::Idle,
            "green: it serves on"
        );
        // Memory runs short before its successor was planned: stopped now, replaced after.
        light.set_memory(Light::Red);
        let plan = s.plan(t);
        assert!(plan.spawns.is_empty(), "{:?}", states(&s));
        assert_eq!(s.worker(c.key).unwrap().phase, Phase::Stopping);
        let other = keys.iter().copied().find(|k| *k != c.key).unwrap();
        assert_eq!(s.checkout().unwrap().key, other, "the other slot serves on");
        reap(&mut s, c.key, "exited with status 0");
        let plan = s.plan(t);
        assert_eq!(plan.spawns.len(), 1);
        assert_eq!(plan.spawns[0].replaces, None);

        // Memory back to green: the successor-first order again.
        light.set_memory(Light::Green);
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        s.answered(other, t, Some(5000), None);
        let plan = s.plan(t);
        assert_eq!(plan.spawns.len(), 1);
        assert_eq!(plan.spawns[0].replaces, Some(other));
        assert_eq!(
            s.worker(other).unwrap().phase,
            Phase::Idle,
            "serves until replaced"
        );
    }

    #[test]
    fn a_rolling_restart_replaces_one_worker_at_a_time() {
        let t = Instant::now();
        let mut s = PoolState::new("/w", config(""), 3, TrafficLight::fixed(Light::Green));
        let plan = s.plan(t);
        let old = start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        s.restart("test");
        let mut replaced = Vec::new();
        for _ in 0..3 {
            let plan = s.plan(t);
            assert_eq!(plan.spawns.len(), 1, "{:?}", states(&s));
            replaced.push(plan.spawns[0].replaces.unwrap());
            start_planned(&mut s, &plan, t);
            assert_eq!(
                s.ready_count(),
                3,
                "capacity holds while the successor starts"
            );
            ready_all(&mut s, t);
            s.plan(t);
            for w in s
                .workers
                .iter()
                .filter(|w| w.phase == Phase::Stopping)
                .map(|w| w.key)
                .collect::<Vec<_>>()
            {
                reap(&mut s, w, "exited with status 0");
            }
        }
        replaced.sort();
        assert_eq!(replaced, old);
        assert!(s.plan(t).spawns.is_empty());
        assert!(s.workers.iter().all(|w| w.generation == 2 && w.is_ready()));
    }

    #[test]
    fn failures_back_off_exponentially_and_make_a_crash_loop() {
        let mut t = Instant::now();
        let cfg = "restart_backoff_ms = 100\nmax_restart_backoff_ms = 350\ncrash_loop_exits = 3\ncrash_loop_window_ms = 10000";
        let mut s = PoolState::new("/w", config(cfg), 1, TrafficLight::fixed(Light::Green));
        let mut delays = Vec::new();
        for _ in 0..4 {
            let plan = s.plan(t);
            assert_eq!(plan.spawns.len(), 1);
            let key = start_planned(&mut s, &plan, t)[0];
            reap(&mut s, key, "exited with status 1");
            let plan = s.plan(t);
            assert!(plan.spawns.is_empty(), "restart waits for the backoff");
            let wake = plan.wake_at.unwrap();
            delays.push(wake - t);
            t = wake;
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 350, 350]);
        assert!(s.crash_loop(t) && s.unavailable(t));
        assert!(s.slot[0]
            .last_exit
            .as_deref()
            .unwrap()
            .contains("before ready"));
        // Once a worker is ready again, the endpoint is available, crash loop or not.
        let plan = s.plan(t);
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        assert!(!s.unavailable(t));
        // And the window forgets old exits.
        assert!(!s.crash_loop(t + Duration::from_secs(11)));
    }

    #[test]
    fn a_timed_out_worker_is_replaced_at_once_without_backoff() {
        let t = Instant::now();
        let mut s = PoolState::new(
            "/w",
            config("restart_backoff_ms = 5000"),
            1,
            TrafficLight::fixed(Light::Green),
        );
        let plan = s.plan(t);
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        let c = s.checkout().unwrap();
        s.timed_out(c.key, t);
        let plan = s.plan(t);
        assert_eq!(
            plan.spawns.len(),
            1,
            "the slot is free again: a fresh worker now"
        );
        assert_eq!(plan.spawns[0].replaces, None);
        // SIGKILL comes after the grace; the exit is not a failure.
        reap(&mut s, c.key, "killed by signal SIGTERM");
        s.plan(t);
        assert_eq!(s.recent_exits(t), 0);
        assert!(s.slot[0]
            .last_exit
            .as_deref()
            .unwrap()
            .contains("timeout_ms"));
    }

    #[test]
    fn a_worker_not_ready_in_time_is_stopped_as_a_failure() {
        let t = Instant::now();
        let mut s = PoolState::new(
            "/w",
            config("ready_timeout_ms = 1000"),
            1,
            TrafficLight::fixed(Light::Green),
        );
        let plan = s.plan(t);
        let key = start_planned(&mut s, &plan, t)[0];
        assert_eq!(s.plan(t).wake_at, Some(t + Duration::from_secs(1)));
        s.plan(t + Duration::from_secs(1));
        assert_eq!(s.worker(key).unwrap().phase, Phase::Stopping);
        reap(&mut s, key, "exited with status 0");
        s.plan(t + Duration::from_secs(1));
        assert_eq!(s.recent_exits(t + Duration::from_secs(1)), 1);
    }

    #[test]
    fn closing_stops_idle_workers_at_once_and_busy_ones_after_their_request() {
        let t = Instant::now();
        let mut s = PoolState::new("/w", config(""), 2, TrafficLight::fixed(Light::Green));
        let plan = s.plan(t);
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        let busy = s.checkout().unwrap();
        s.closing = true;
        let plan = s.plan(t);
        assert!(plan.spawns.is_empty() && !plan.done);
        assert_eq!(states(&s), [(0, "busy"), (1, "retiring")]);
        s.answered(busy.key, t, None, None);
        assert_eq!(states(&s), [(0, "retiring"), (1, "retiring")]);
        for key in s.workers.iter().map(|w| w.key).collect::<Vec<_>>() {
            reap(&mut s, key, "exited with status 0");
        }
        assert!(s.plan(t).done);
    }

    #[test]
    fn fewer_slots_retire_the_extra_workers_when_idle() {
        let t = Instant::now();
        let mut s = PoolState::new("/w", config(""), 2, TrafficLight::fixed(Light::Green));
        let plan = s.plan(t);
        start_planned(&mut s, &plan, t);
        ready_all(&mut s, t);
        let cfg = (*s.config).clone();
        s.reconfigure(cfg, 1);
        assert_eq!(s.generation, 1, "same config: no restart");
        s.plan(t);
        assert_eq!(states(&s), [(0, "ready"), (1, "retiring")]);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<u128> = (1..=6).map(|f| backoff(i, m, f).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(i, m, u32::MAX), m);
    }
}
