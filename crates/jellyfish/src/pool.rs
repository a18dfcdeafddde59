//! A fixed pool of supervised worker threads that run one task body, with completion signalling.

use common::supervisor::{Backoff, SupervisedThread};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::sync::Arc;

/// `size` worker threads running `body` on each submitted task. One dispatcher submits at a time.
pub struct Pool<T: Send + 'static> {
    tasks: Sender<T>,
    done: Receiver<()>,
    workers: Vec<SupervisedThread>,
}

/// Sends one completion signal when dropped, so a task that unwinds still counts as done.
struct DoneGuard<'a>(&'a Sender<()>);

impl Drop for DoneGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl<T: Send + 'static> Pool<T> {
    /// Start `size` workers named `{name}-{i}`, each under a supervisor that replaces it if it dies.
    pub fn new<F>(name: &str, size: usize, body: F) -> std::io::Result<Pool<T>>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        let size = size.max(1);
        let (tasks, task_rx) = bounded::<T>(size);
        let (done_tx, done) = bounded::<()>(size);
        let body = Arc::new(body);
        let mut workers = Vec::with_capacity(size);
        for i in 0..size {
            let (rx, done_tx, body) = (task_rx.clone(), done_tx.clone(), body.clone());
            workers.push(SupervisedThread::spawn(
                &format!("{name}-{i}"),
                Backoff::default(),
                move || {
                    while let Ok(task) = rx.recv() {
                        let _done = DoneGuard(&done_tx);
                        body(task);
                    }
                },
            )?);
        }
        Ok(Pool {
            tasks,
            done,
            workers,
        })
    }

    /// Hand `task` to an idle worker: the caller counts it as in flight until
    /// [`Pool::wait_done`] or [`Pool::try_done`] returns true for it, and keeps that count at most
    /// the pool size. Fails only if every worker is gone.
    pub fn submit(&self, task: T) -> Result<(), T> {
        self.tasks.send(task).map_err(|e| e.into_inner())
    }

    /// Wait until a task ends; false if no worker is left to end one.
    pub fn wait_done(&self) -> bool {
        self.done.recv().is_ok()
    }

    /// True if a task has ended that was not yet counted.
    pub fn try_done(&self) -> bool {
        self.done.try_recv().is_ok()
    }

    /// Worker replacements so far, across the pool.
    pub fn restarts(&self) -> u64 {
        self.workers.iter().map(SupervisedThread::restarts).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Submit `tasks` with at most `limit` in flight, then wait for all, as the executor does.
    fn run_limited(pool: &Pool<u32>, tasks: std::ops::Range<u32>, limit: usize) {
        let mut in_flight = 0;
        for n in tasks {
            if in_flight >= limit {
                assert!(pool.wait_done());
                in_flight -= 1;
            }
            pool.submit(n).unwrap();
            in_flight += 1;
        }
        while in_flight > 0 {
            assert!(pool.wait_done());
            in_flight -= 1;
        }
    }

    #[test]
    fn a_worker_that_dies_is_replaced_and_its_task_still_counts_as_done() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let r = ran.clone();
        let pool = Pool::new("test-pool", 2, move |n: u32| {
            assert!(n != 0, "deliberate worker death");
            r.lock().unwrap().push(n);
        })
        .unwrap();
        run_limited(&pool, 0..6, 2);
        let mut seen = ran.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        // The supervisor counts the restart once the replacement is running.
        for _ in 0..200 {
            if pool.restarts() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(pool.restarts(), 1);
    }

    #[test]
    fn never_more_in_flight_than_submitted_limit() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n2, p2) = (now.clone(), peak.clone());
        let pool = Pool::new("test-limit", 4, move |_: u32| {
            let c = n2.fetch_add(1, Ordering::SeqCst) + 1;
            p2.fetch_max(c, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            n2.fetch_sub(1, Ordering::SeqCst);
        })
        .unwrap();
        run_limited(&pool, 0..20, 2);
        assert!(peak.load(Ordering::SeqCst) <= 2);
    }
}
