//! The supervisor: runs a long-lived loop, replaces it with a fresh one when it panics (with
//! exponential backoff), and stops when the loop returns normally. Also the process panic hook.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Restart pacing: the first restart waits `initial`, each further one twice as long up to `max`;
/// a component that ran longer than `healthy_after` before failing starts again from `initial`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// A run this long resets the delay.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    fn next(&self, current: Duration, ran_for: Duration) -> Duration {
        if ran_for >= self.healthy_after || current.is_zero() {
            self.initial
        } else {
            (current * 2).min(self.max)
        }
    }
}

/// A supervised OS thread: the component runs on a worker thread that a supervisor thread replaces
/// whenever it panics.
#[derive(Debug)]
pub struct SupervisedThread {
    handle: Option<JoinHandle<()>>,
    restarts: Arc<AtomicU64>,
    /// Closed (its sender dropped) when the supervisor thread ends: what [`Self::finished`] awaits.
    done: tokio::sync::watch::Receiver<()>,
}

impl SupervisedThread {
    /// Start `body` on a thread named `name`. Each run gets a fresh thread; a panic is logged by
    /// the panic hook, counted, and followed by a restart after the backoff. A normal return ends
    /// supervision.
    pub fn spawn<F>(name: &str, backoff: Backoff, body: F) -> std::io::Result<SupervisedThread>
    where
        F: Fn() + Send + Sync + 'static,
    {
        let restarts = Arc::new(AtomicU64::new(0));
        let counter = restarts.clone();
        let body = Arc::new(body);
        let worker_name = name.to_string();
        let (done_tx, done) = tokio::sync::watch::channel(());
        let handle = std::thread::Builder::new().name(format!("{name}-sup")).spawn(move || {
            // Dropped when this thread ends, however it ends: that wakes `finished`.
            let _done = done_tx;
            let mut delay = Duration::ZERO;
            loop {
                let started = Instant::now();
                let run = body.clone();
                let spawned = std::thread::Builder::new().name(worker_name.clone()).spawn(move || run());
                let outcome = match spawned {
                    Ok(worker) => worker.join(),
                    Err(e) => {
                        tracing::error!(component = %worker_name, cause = %e, "cannot start thread");
                        Err(Box::new(()) as Box<dyn std::any::Any + Send>)
                    }
                };
                if outcome.is_ok() {
                    return;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                delay = backoff.next(delay, started.elapsed());
                tracing::warn!(component = %worker_name, restart_in_ms = delay.as_millis() as u64, "component failed; replacing it");
                std::thread::sleep(delay);
            }
        })?;
        Ok(SupervisedThread {
            handle: Some(handle),
            restarts,
            done,
        })
    }

    /// How many times the component was replaced.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// A shared handle to the restart count.
    pub fn restart_counter(&self) -> Arc<AtomicU64> {
        self.restarts.clone()
    }

    /// True once supervision has ended (the component returned normally): the moment
    /// [`Self::finished`] resolves. Not the OS thread's own end (`JoinHandle::is_finished`),
    /// which comes a little later: a caller that awaits `finished` and then checks this would
    /// otherwise find it false and await again, at once, in a busy loop until the thread is gone.
    pub fn is_finished(&self) -> bool {
        self.done.has_changed().is_err()
    }

    /// Resolves once supervision has ended: awaited, not polled.
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        // Nothing is ever sent: `changed` returns only when the sender is dropped.
        while done.changed().await.is_ok() {}
    }

    /// Wait for supervision to end.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Run the future made by `make` as a tokio task, replacing it with a fresh one when it panics;
/// stop when it returns or is cancelled. Returns the number of restarts.
pub async fn supervise_task<F, Fut>(name: &'static str, backoff: Backoff, make: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut restarts = 0;
    let mut delay = Duration::ZERO;
    loop {
        let started = Instant::now();
        match tokio::spawn(make()).await {
            Ok(()) => return restarts,
            Err(e) if e.is_panic() => {
                restarts += 1;
                delay = backoff.next(delay, started.elapsed());
                tracing::warn!(
                    component = name,
                    restart_in_ms = delay.as_millis() as u64,
                    "component failed; replacing it"
                );
                tokio::time::sleep(delay).await;
            }
            Err(_) => return restarts,
        }
    }
}

/// Run `f`, turning a panic into `Err(message)`.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Route panics to the log as one structured line (instead of stderr), so that a contained panic
/// is logged exactly once, with its thread and location.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = panic_message(info.payload());
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), %location, %message, "panic contained");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_panicking_component_is_replaced_until_it_returns() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            healthy_after: Duration::from_secs(60),
        };
        let sup = SupervisedThread::spawn("test-component", backoff, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            assert!(n >= 3, "deliberate failure {n}");
        })
        .unwrap();
        let restarts = sup.restart_counter();
        sup.join();
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(restarts.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(30),
            healthy_after: Duration::from_secs(1),
        };
        let short = Duration::from_millis(1);
        let d1 = b.next(Duration::ZERO, short);
        let d2 = b.next(d1, short);
        let d3 = b.next(d2, short);
        assert_eq!(
            (d1, d2, d3),
            (
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(30)
            )
        );
        assert_eq!(
            b.next(d3, Duration::from_secs(2)),
            Duration::from_millis(10)
        );
    }

    /// `App::all_stopped` awaits `finished` and then checks `is_finished`: were the two to
    /// disagree, it would loop without awaiting anything until the OS thread is gone.
    #[tokio::test]
    async fn is_finished_holds_as_soon_as_finished_resolves() {
        for _ in 0..20 {
            let sup = SupervisedThread::spawn("test-ends", Backoff::default(), || {}).unwrap();
            sup.finished().await;
            assert!(sup.is_finished());
            sup.join();
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_replaced() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            healthy_after: Duration::from_secs(60),
        };
        let restarts = supervise_task("test-task", backoff, move || {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                assert!(n >= 2, "deliberate failure {n}");
            }
        })
        .await;
        assert_eq!(restarts, 2);
    }
}
