//! The pool's supervisor thread: starts the workers the plan asks for, learns of their exits,
//! probes their readiness, polls `watch` files and resident memory, and wakes at each deadline.
//!
//! It lives exactly as long as the pool, and it is the only thread that spawns workers: Linux
//! sends a worker its `PR_SET_PDEATHSIG` when the thread that forked it exits, so a worker must
//! never be forked from a thread that may end before the pool does (see [`crate::process`]).
//! It also owns the pool's I/O runtime (one thread), which the requests' exchanges and the
//! readiness probes run on, and drops it when the pool is done.

use crate::pool::Shared;
use crate::process::{self, SocketDir};
use crate::proxy;
use crate::state::{HealthCheck, Process, Spawn, Worker};
use children::Group;
use config::WorkerConfig;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How often `watch` files and resident memory are looked at.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Readiness probing: first retry delay, doubling up to the longest.
const PROBE_FIRST_DELAY: Duration = Duration::from_millis(5);
const PROBE_MAX_DELAY: Duration = Duration::from_millis(100);

/// How long one `ready_path` request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Polling interval of a waiter where the platform cannot wait without reaping.
const REAP_POLL: Duration = Duration::from_millis(10);

/// Start the supervisor thread of a pool; returns its I/O runtime's handle.
pub(crate) fn spawn(
    endpoint: &str,
    shared: Arc<Shared>,
    dir: SocketDir,
) -> io::Result<tokio::runtime::Handle> {
    let (tx, rx) = mpsc::channel();
    let endpoint = endpoint.to_string();
    let name = format!("fc-wk{}", endpoint.replace('/', "-"));
    thread::Builder::new().name(name).spawn(move || {
        let runtime = match relay::io_runtime("fc-worker-io") {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(Ok(runtime.handle().clone()));
        let stopped = shared.stopped.clone();
        Supervisor {
            endpoint,
            shared,
            runtime: runtime.handle().clone(),
            dir,
            watched: Watched::default(),
        }
        .run();
        runtime.shutdown_timeout(Duration::from_secs(1));
        stopped.store(true, std::sync::atomic::Ordering::Release);
    })?;
    rx.recv()
        .map_err(|_| io::Error::other("the worker supervisor thread ended at start"))?
}

/// The last look at the `watch` files: under which config, and what they were.
#[derive(Debug, Default)]
struct Watched {
    config: Option<Arc<WorkerConfig>>,
    stamps: Vec<Option<(Option<SystemTime>, u64)>>,
}

struct Supervisor {
    endpoint: String,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    dir: SocketDir,
    watched: Watched,
}

impl Supervisor {
    fn run(mut self) {
        let mut next_poll = Instant::now();
        loop {
            // A panic in one round (a bug) is logged by the panic hook; the next round starts
            // from the state as it is, so the workers stay supervised.
            match catch_unwind(AssertUnwindSafe(|| self.round(&mut next_poll))) {
                Ok(None) => break,
                Ok(Some((epoch, until))) => {
                    let mut state = self.shared.lock();
                    loop {
                        let now = Instant::now();
                        if state.epoch != epoch || now >= until {
                            break;
                        }
                        state = self.shared.wait(state, until - now);
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
        tracing::info!(endpoint = %self.endpoint, "worker pool stopped");
    }

    /// One round: poll if due, plan, start. `None` once the pool is done; otherwise the epoch the
    /// plan saw and when to look again at the latest.
    fn round(&mut self, next_poll: &mut Instant) -> Option<(u64, Instant)> {
        let now = Instant::now();
        if now >= *next_poll {
            *next_poll = now + POLL_EVERY;
            self.poll_watch();
            self.poll_rss();
        }
        let (plan, config, epoch) = {
            let mut state = self.shared.lock();
            let plan = state.plan(now);
            // Requests waiting for a worker look again (a crash loop may have begun).
            self.shared.notify(&state);
            (plan, state.config.clone(), state.epoch)
        };
        if plan.removed {
            // A worker's descendants that escaped its group, or were re-parented to the server
            // (a child subreaper) when it died, are killed and reaped now.
            children::kill_orphans();
        }
        if plan.done {
            return None;
        }
        for spawn in &plan.spawns {
            self.start(spawn, &config);
        }
        for check in plan.checks {
            match &config.health_path {
                Some(path) => {
                    self.runtime.spawn(health_check(
                        self.shared.clone(),
                        check,
                        path.clone(),
                        config.health_timeout,
                        config.keepalive_timeout,
                    ));
                }
                // Never: the plan and the config are one snapshot. Back in service, unchecked.
                None => {
                    let mut state = self.shared.lock();
                    let conn = check.conn.map(|(conn, _)| conn);
                    state.health_checked(check.key, Instant::now(), Ok(conn));
                    self.shared.changed(&mut state);
                }
            }
        }
        let until = plan.wake_at.map_or(*next_poll, |t| t.min(*next_poll));
        Some((epoch, until))
    }

    /// Start the worker `spawn` names, with its waiter and its readiness probe.
    fn start(&self, spawn: &Spawn, config: &Arc<WorkerConfig>) {
        let now = Instant::now();
        let socket = self.dir.socket(spawn.slot, spawn.key);
        // The waiter exists before the child does, so no child is ever left without one.
        let (child_tx, child_rx) = mpsc::channel::<(Child, Arc<Group>)>();
        let shared = self.shared.clone();
        let key = spawn.key;
        let waiter = thread::Builder::new()
            .name("fc-worker-wait".into())
            .spawn(move || reap(&shared, key, child_rx));
        let started = match waiter {
            Ok(_) => process::command(config, spawn.slot, &socket)
                .and_then(|mut command| self.shared.children.spawn(&mut command)),
            Err(e) => Err(io::Error::other(format!(
                "cannot start a waiter thread: {e}"
            ))),
        };
        let (child, registered) = match started {
            Ok(started) => started,
            Err(e) => {
                let program = config.command.first().map_or("", String::as_str);
                let mut state = self.shared.lock();
                state.spawn_failed(spawn.slot, now, format!("cannot start `{program}`: {e}"));
                self.shared.changed(&mut state);
                return;
            }
        };
        let pid = child.id();
        let group = registered.group().clone();
        let limit = config.max_requests.map(|m| {
            m.get()
                .saturating_add(jitter(config.max_requests_jitter, spawn.key))
        });
        {
            let process = Process {
                group: group.clone(),
                _registered: registered,
            };
            let worker = Worker::new(spawn, pid, Some(process), socket.clone(), limit, now);
            let mut state = self.shared.lock();
            state.insert(worker);
            self.shared.changed(&mut state);
        }
        tracing::info!(endpoint = %self.endpoint, slot = spawn.slot, pid, generation = spawn.generation, socket = %socket.display(), "worker started");
        if let Err(mpsc::SendError((mut child, group))) = child_tx.send((child, group)) {
            // The waiter is gone (it cannot be): reap here rather than leave a zombie.
            group.signal(nix::sys::signal::Signal::SIGKILL);
            let status = group.reap(&mut child, true);
            let how = status.map_or_else(|| "reaped".to_string(), |s| process::describe_exit(&s));
            let mut state = self.shared.lock();
            state.exited(key, how);
            self.shared.changed(&mut state);
            return;
        }
        self.runtime.spawn(probe(
            self.shared.clone(),
            spawn.key,
            socket,
            config.ready_path.clone(),
        ));
    }

    /// A change of a `watch` file (modification time or size, or appearing or vanishing) under
    /// the same config starts a rolling restart.
    fn poll_watch(&mut self) {
        let config = self.shared.lock().config.clone();
        if config.watch.is_empty() {
            self.watched = Watched::default();
            return;
        }
        let stamps: Vec<_> = config
            .watch
            .iter()
            .map(|p| {
                let path: PathBuf = match &config.cwd {
                    Some(cwd) if p.is_relative() => cwd.join(p),
                    _ => p.clone(),
                };
                std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            })
            .collect();
        let same_config = self
            .watched
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &config));
        if same_config && stamps != self.watched.stamps {
            let mut state = self.shared.lock();
            if !state.closing {
                state.restart("a watched file changed");
                self.shared.changed(&mut state);
            }
        }
        self.watched = Watched {
            config: Some(config),
            stamps,
        };
    }

    /// Read every live worker's resident memory, for `/status` and `/metrics`.
    fn poll_rss(&self) {
        let pids: Vec<(u64, u32)> = {
            let state = self.shared.lock();
            state
                .workers
                .iter()
                .filter(|w| w.exit.is_none())
                .map(|w| (w.key, w.pid))
                .collect()
        };
        let readings: Vec<(u64, Option<u64>)> = pids
            .into_iter()
            .map(|(key, pid)| (key, process::rss_bytes(pid)))
            .collect();
        let mut state = self.shared.lock();
        for (key, rss) in readings {
            if let Some(w) = state.workers.iter_mut().find(|w| w.key == key) {
                if rss.is_some() {
                    w.rss = rss;
                }
            }
        }
    }
}

/// The waiter thread of one worker: wait for it to exit (leaving it a zombie so its group id
/// stays ours), SIGKILL whatever is left in its group, reap it, and tell the pool how it ended.
fn reap(shared: &Shared, key: u64, child_rx: mpsc::Receiver<(Child, Arc<Group>)>) {
    let Ok((mut child, group)) = child_rx.recv() else {
        return; // the worker never started
    };
    let status = loop {
        let exited = process::wait_exited(child.id());
        if let Some(status) = group.reap(&mut child, exited) {
            break status;
        }
        thread::sleep(REAP_POLL);
    };
    let mut state = shared.lock();
    state.exited(key, process::describe_exit(&status));
    shared.changed(&mut state);
}

/// Try the worker's socket until it accepts (and `ready_path` answers 2xx), while the worker is
/// still starting; then hand the connection to the pool. The ready timeout is the plan's.
async fn probe(shared: Arc<Shared>, key: u64, socket: PathBuf, ready_path: Option<String>) {
    let mut delay = PROBE_FIRST_DELAY;
    while shared.lock().is_starting(key) {
        if let Ok(mut conn) = proxy::connect(&socket).await {
            let ready = match &ready_path {
                None => true,
                Some(path) => tokio::time::timeout(PROBE_TIMEOUT, proxy::probe(&mut conn, path))
                    .await
                    .unwrap_or(false),
            };
            if ready {
                let mut state = shared.lock();
                if state.mark_ready(key, conn, Instant::now()) {
                    shared.changed(&mut state);
                }
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(PROBE_MAX_DELAY);
    }
}

/// An idle worker's health check: `GET path` within `bound` (its `health_timeout_ms`), on its
/// kept-alive connection if still within `keepalive`, else on a fresh one
/// ([`relay::probe_kept`]). The outcome goes to the pool: back in service, or replaced.
async fn health_check(
    shared: Arc<Shared>,
    check: HealthCheck,
    path: String,
    bound: Duration,
    keepalive: Duration,
) {
    let HealthCheck { key, socket, conn } = check;
    // Should the check itself fail (a bug unwinding it), the worker is not left out of service.
    let mut unsettled = Unsettled {
        shared: Some(shared),
        key,
    };
    let target = relay::Target::Unix(socket);
    let host = hyper::header::HeaderValue::from_static("localhost");
    let checked = async {
        let (status, conn) = relay::probe_kept(conn, keepalive, &target, &path, &host).await?;
        healthy(status, conn)
    };
    let result = tokio::time::timeout(bound, checked)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer to GET {path} within health_timeout_ms ({} ms)",
                bound.as_millis()
            ))
        });
    unsettled.settle(result);
}

/// A health check not yet settled: settled as failed if dropped so (its task unwound).
struct Unsettled {
    shared: Option<Arc<Shared>>,
    key: u64,
}

impl Unsettled {
    fn settle(&mut self, result: Result<Option<proxy::Conn>, String>) {
        if let Some(shared) = self.shared.take() {
            let mut state = shared.lock();
            state.health_checked(self.key, Instant::now(), result);
            shared.changed(&mut state);
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.settle(Err("the health check failed internally".into()));
    }
}

/// A health check's answer: 2xx keeps the worker (and its connection, if still open).
fn healthy(status: hyper::StatusCode, conn: proxy::Conn) -> Result<Option<proxy::Conn>, String> {
    if status.is_success() {
        Ok((!conn.is_closed()).then_some(conn))
    } else {
        Err(format!("answered {status}"))
    }
}

/// A pseudo-random number in `0..=max` for worker `key` (SplitMix64 of the key and the clock):
/// enough to spread recycling, no randomness crate needed.
fn jitter(max: u64, key: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut z = key.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(nanos);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (max.saturating_add(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(jitter(0, 7), 0);
        let draws: Vec<u64> = (0..200).map(|k| jitter(5, k)).collect();
        assert!(draws.iter().all(|&d| d <= 5));
        assert!(draws.iter().any(|&d| d > 0), "{draws:?}");
        let _ = jitter(u64::MAX, 3); // no overflow
    }
}
