//! Crab mode: serial execution for work that takes the whole machine.
//!
//! One job (or, with `max_batch` above 1, one batch call) at a time, in FIFO order, on the endpoint's dedicated dispatcher OS thread (never a
//! tokio worker), with a `pace` pause between two jobs. A job whose client left before its turn is
//! skipped without the pause.
//!
//! # Layout
//! - [`CrabExecutor`]: the [`common::executor::Executor`] for crab mode.
#![deny(missing_docs)]

use common::executor::{Executor, JobRunner};
use common::queue::Batch;
use config::Mode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest single sleep of the pace wait, so shutdown is noticed promptly.
const PACE_SLICE: Duration = Duration::from_millis(50);

/// Runs a batch's jobs one after another with a pause between them.
#[derive(Debug)]
pub struct CrabExecutor {
    pace: Duration,
    last_end: Mutex<Option<Instant>>,
}

impl CrabExecutor {
    /// A serial executor that waits `pace` between the end of one job and the start of the next.
    pub fn new(pace: Duration) -> CrabExecutor {
        CrabExecutor {
            pace,
            last_end: Mutex::new(None),
        }
    }

    fn pace_wait(&self, runner: &JobRunner) {
        if self.pace.is_zero() {
            return;
        }
        let last = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
        let Some(wake) = last.map(|t| t + self.pace) else {
            return;
        };
        loop {
            let now = Instant::now();
            if now >= wake || runner.closing() {
                return;
            }
            std::thread::sleep((wake - now).min(PACE_SLICE));
        }
    }
}

impl Executor for CrabExecutor {
    fn mode(&self) -> Mode {
        Mode::Crab
    }

    fn run_batch(&self, batch: &mut Batch, runner: &Arc<JobRunner>) {
        // With `max_batch` above 1, a unit of work is up to that many jobs in one handler call.
        while let Some(work) = batch.pop_work(runner.max_batch()) {
            if !work.client_gone() {
                self.pace_wait(runner);
            }
            // One at a time: the one running slot (an inline run an adaptive endpoint started
            // before its light turned red may still hold it for a moment).
            if runner.run_work(work, 1) {
                *self.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
        }
    }
}
