//! Adaptive mode: the traffic light picks how each handed-off batch runs.
//!
//! Green → jellyfish at `workers`; yellow → jellyfish at `yellow_workers`; red → crab, serial.
//! The light is read once per batch (one atomic load) and each decision is counted for `/status`.

use common::executor::{Executor, JobRunner};
use common::queue::Batch;
use config::Mode;
use crab::CrabExecutor;
use jellyfish::JellyfishExecutor;
use light::{Light, TrafficLight};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Runs each batch in the mode the light calls for.
#[derive(Debug)]
pub struct AdaptiveExecutor {
    light: TrafficLight,
    crab: CrabExecutor,
    pool: JellyfishExecutor,
    yellow_workers: usize,
    /// Batches run per light: green, yellow, red.
    decisions: [AtomicU64; 3],
}

impl AdaptiveExecutor {
    /// An adaptive executor with a pool of `workers` threads, `yellow_workers` of them used on
    /// yellow, and a serial crab with `pace` on red.
    pub fn new(
        name: &str,
        light: TrafficLight,
        workers: usize,
        yellow_workers: usize,
        pace: std::time::Duration,
    ) -> std::io::Result<AdaptiveExecutor> {
        let pool = JellyfishExecutor::new(name, workers)?;
        let yellow_workers = yellow_workers.clamp(1, pool.workers());
        Ok(AdaptiveExecutor {
            light,
            crab: CrabExecutor::new(pace),
            pool,
            yellow_workers,
            decisions: Default::default(),
        })
    }

    fn concurrency_for(&self, light: Light) -> usize {
        match light {
            Light::Green => self.pool.workers(),
            Light::Yellow => self.yellow_workers,
            Light::Red => 1,
        }
    }
}

impl Executor for AdaptiveExecutor {
    fn mode(&self) -> Mode {
        Mode::Adaptive
    }

    fn run_batch(&self, batch: &mut Batch, runner: &Arc<JobRunner>) {
        let light = self.light.current();
        let slot = match light {
            Light::Green => 0,
            Light::Yellow => 1,
            Light::Red => 2,
        };
        if let Some(d) = self.decisions.get(slot) {
            d.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(endpoint = %runner.endpoint(), %light, jobs = batch.len(), "adaptive batch");
        match light {
            Light::Red => {
                // One at a time: the pool's jobs of earlier batches end first.
                self.pool.drain();
                self.crab.run_batch(batch, runner);
            }
            _ => self
                .pool
                .run_limited(batch, runner, self.concurrency_for(light)),
        }
    }

    fn concurrency(&self) -> usize {
        self.concurrency_for(self.light.current())
    }

    fn drain(&self) {
        self.pool.drain();
    }

    fn allows_inline(&self) -> bool {
        self.light.current() != Light::Red
    }

    fn starts_when_a_worker_frees(&self) -> bool {
        self.light.current() != Light::Red
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let [green, yellow, red] = &self.decisions;
        vec![
            ("batches_green_jellyfish", green.load(Ordering::Relaxed)),
            ("batches_yellow_jellyfish", yellow.load(Ordering::Relaxed)),
            ("batches_red_crab", red.load(Ordering::Relaxed)),
            ("workers", self.pool.workers() as u64),
            ("yellow_workers", self.yellow_workers as u64),
            ("worker_restarts", self.pool.restarts()),
        ]
    }
}
