//! A running endpoint: its config, handoff queue, counters, and supervised dispatcher thread.

use crate::config::EndpointConfig;
use crate::counters::{CountersSnapshot, EndpointCounters};
use crate::executor::{dispatch, Executor, JobRunner};
use crate::handler::Handler;
use crate::queue::HandoffQueue;
use crate::supervisor::{Backoff, SupervisedThread};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One endpoint with its queue and executor running.
#[derive(Debug)]
pub struct Endpoint {
    /// Its validated config.
    pub config: EndpointConfig,
    /// Its bounded handoff queue.
    pub queue: Arc<HandoffQueue>,
    /// Its outcome counters.
    pub counters: Arc<EndpointCounters>,
    runner: Arc<JobRunner>,
    mode: &'static str,
    restarts: Arc<AtomicU64>,
    dispatcher: Mutex<Option<SupervisedThread>>,
}

/// An endpoint's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// Execution mode.
    pub mode: &'static str,
    /// Overflow policy.
    pub overflow: &'static str,
    /// Jobs admitted and not yet started.
    pub queue_depth: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// True while a job runs.
    pub busy: bool,
    /// Jobs running now.
    pub running: usize,
    /// Times the dispatcher was replaced after a failure.
    pub restarts: u64,
    /// Outcome counters.
    pub counters: CountersSnapshot,
}

impl Endpoint {
    /// Start an endpoint: its queue, and its dispatcher thread under a supervisor.
    pub fn start(
        config: EndpointConfig,
        handler: Arc<dyn Handler>,
        executor: Arc<dyn Executor>,
    ) -> std::io::Result<Arc<Endpoint>> {
        let queue = Arc::new(HandoffQueue::new(config.queue.get()));
        let counters = Arc::new(EndpointCounters::default());
        let runner = Arc::new(JobRunner::new(
            &config.path,
            handler,
            queue.clone(),
            config.queue_timeout,
            counters.clone(),
        ));
        let mode = executor.mode();
        let (q, r) = (queue.clone(), runner.clone());
        let thread_name = format!("fc-{}{}", mode, config.path.replace('/', "-"));
        let dispatcher = SupervisedThread::spawn(&thread_name, Backoff::default(), move || {
            dispatch(&q, executor.as_ref(), &r);
        })?;
        Ok(Arc::new(Endpoint {
            config,
            queue,
            counters,
            runner,
            mode,
            restarts: dispatcher.restart_counter(),
            dispatcher: Mutex::new(Some(dispatcher)),
        }))
    }

    /// The endpoint's status line.
    pub fn status(&self) -> EndpointStatus {
        let running = self.runner.running();
        EndpointStatus {
            mode: self.mode,
            overflow: self.config.overflow.as_str(),
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
            busy: running > 0,
            running,
            restarts: self.restarts.load(Ordering::Relaxed),
            counters: self.counters.snapshot(),
        }
    }

    /// Stop admitting: new requests get `503`, queued jobs are shed, the running one finishes.
    pub fn close(&self) {
        self.queue.close();
    }

    /// True once the dispatcher has drained and stopped.
    pub fn is_stopped(&self) -> bool {
        self.dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|d| d.is_finished())
    }
}
